// big_module - GPU probe only: a module with a 1.5 GiB __device__ array, to see when its memory is taken.
// Built with: nvcc -arch=sm_90 -fatbin -o big_module.fatbin big_module.cu   (also -cubin)
__device__ char big_array[1536ull << 20];

extern "C" __global__ void touch_big(void)
{
    big_array[(size_t)threadIdx.x * 4096u] = 1;
}
