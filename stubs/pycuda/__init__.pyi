# Type stub for pycuda, written for edgeseg: pycuda ships neither stubs nor py.typed, and it
# cannot be installed where CUDA is absent. Only the names edgeseg calls are declared (see
# driver.pyi); anything else is reported by mypy as missing, which is the point.
