// pool.cu — placeholder, written by the CUDA engine work (see DESIGN.md).
#include "common.cuh"
