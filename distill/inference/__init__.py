"""The shared inference engine: ONNX Runtime / OpenVINO graphs and their export, token-budget batching,
the device, the length model of a pair's cost, and long documents' passages (FirstP, MaxP, SumP).
"""
