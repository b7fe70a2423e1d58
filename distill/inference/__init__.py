"""The shared inference engine: ONNX Runtime / OpenVINO graphs and their export, token-budget batching,
the device, and the length model of a pair's cost.
"""
