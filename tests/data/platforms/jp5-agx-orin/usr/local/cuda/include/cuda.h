/* recorded device: the CUDA driver API header exists here */
#define CUDA_VERSION 11040
