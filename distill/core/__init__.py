"""The bottom layer: errors, atomic writes and JSON reads (io), output ownership, the frame schemas,
manifests, the loader registry, recorded paths and the CPU's capabilities. Imports nothing of
distill.
"""
