"""The top layer: the commands' path-and-settings functions (tasks), the demo pipeline and the CLI. The
only part of distill that may import teachers/ and students/.
"""
