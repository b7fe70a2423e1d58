"""Students: rerankers trained to imitate a cached teacher (cross-encoder, bi-encoder, LightGBM)."""
