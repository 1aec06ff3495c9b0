/*
 * errors.c: cuGetErrorName / cuGetErrorString. One X-macro table lists every
 * CUresult of CUDA 13.0's cuda.h with its message: the driver's own wording
 * for the codes tests meet most, else the first sentence of cuda.h's
 * documentation. The table was generated from cuda.h's enum; a code missing
 * here is reported like the real driver reports an unknown one.
 */
#include "fakecuda.h"

#define FC_ERRORS(X) \
    X(CUDA_SUCCESS, "no error") \
    X(CUDA_ERROR_INVALID_VALUE, "invalid argument") \
    X(CUDA_ERROR_OUT_OF_MEMORY, "out of memory") \
    X(CUDA_ERROR_NOT_INITIALIZED, "initialization error") \
    X(CUDA_ERROR_DEINITIALIZED, "driver shutting down") \
    X(CUDA_ERROR_PROFILER_DISABLED, "this indicates profiler is not initialized for this run") \
    X(CUDA_ERROR_PROFILER_NOT_INITIALIZED, "\\deprecated This error return is deprecated as of CUDA 5.0") \
    X(CUDA_ERROR_PROFILER_ALREADY_STARTED, "\\deprecated This error return is deprecated as of CUDA 5.0") \
    X(CUDA_ERROR_PROFILER_ALREADY_STOPPED, "\\deprecated This error return is deprecated as of CUDA 5.0") \
    X(CUDA_ERROR_STUB_LIBRARY, "this indicates that the CUDA driver that the application has loaded is a stub library") \
    X(CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER, "this indicates that the API call requires a newer CUDA driver than the one currently") \
    X(CUDA_ERROR_DEVICE_UNAVAILABLE, "this indicates that requested CUDA device is unavailable at the current time") \
    X(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected") \
    X(CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal") \
    X(CUDA_ERROR_DEVICE_NOT_LICENSED, "this error indicates that the Grid license is not applied") \
    X(CUDA_ERROR_INVALID_IMAGE, "this indicates that the device kernel image is invalid") \
    X(CUDA_ERROR_INVALID_CONTEXT, "invalid device context") \
    X(CUDA_ERROR_CONTEXT_ALREADY_CURRENT, "this indicated that the context being supplied as a parameter to the API call was already") \
    X(CUDA_ERROR_MAP_FAILED, "this indicates that a map or register operation has failed") \
    X(CUDA_ERROR_UNMAP_FAILED, "this indicates that an unmap or unregister operation has failed") \
    X(CUDA_ERROR_ARRAY_IS_MAPPED, "this indicates that the specified array is currently mapped and thus cannot be destroyed") \
    X(CUDA_ERROR_ALREADY_MAPPED, "this indicates that the resource is already mapped") \
    X(CUDA_ERROR_NO_BINARY_FOR_GPU, "this indicates that there is no kernel image available that is suitable for the device") \
    X(CUDA_ERROR_ALREADY_ACQUIRED, "this indicates that a resource has already been acquired") \
    X(CUDA_ERROR_NOT_MAPPED, "this indicates that a resource is not mapped") \
    X(CUDA_ERROR_NOT_MAPPED_AS_ARRAY, "this indicates that a mapped resource is not available for access as an array") \
    X(CUDA_ERROR_NOT_MAPPED_AS_POINTER, "this indicates that a mapped resource is not available for access as a pointer") \
    X(CUDA_ERROR_ECC_UNCORRECTABLE, "this indicates that an uncorrectable ECC error was detected during execution") \
    X(CUDA_ERROR_UNSUPPORTED_LIMIT, "this indicates that the CUlimit passed to the API call is not supported by the active") \
    X(CUDA_ERROR_CONTEXT_ALREADY_IN_USE, "this indicates that the CUcontext passed to the API call can only be bound to a single") \
    X(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, "this indicates that peer access is not supported across the given devices") \
    X(CUDA_ERROR_INVALID_PTX, "this indicates that a PTX JIT compilation failed") \
    X(CUDA_ERROR_INVALID_GRAPHICS_CONTEXT, "this indicates an error with OpenGL or DirectX context") \
    X(CUDA_ERROR_NVLINK_UNCORRECTABLE, "this indicates that an uncorrectable NVLink error was detected during the execution") \
    X(CUDA_ERROR_JIT_COMPILER_NOT_FOUND, "this indicates that the PTX JIT compiler library was not found") \
    X(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "this indicates that the provided PTX was compiled with an unsupported toolchain") \
    X(CUDA_ERROR_JIT_COMPILATION_DISABLED, "this indicates that the PTX JIT compilation was disabled") \
    X(CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY, "this indicates that the CUexecAffinityType passed to the API call is not supported by the") \
    X(CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC, "this indicates that the code to be compiled by the PTX JIT contains unsupported call to") \
    X(CUDA_ERROR_CONTAINED, "this indicates that an exception occurred on the device that is now contained by the") \
    X(CUDA_ERROR_INVALID_SOURCE, "this indicates that the device kernel source is invalid") \
    X(CUDA_ERROR_FILE_NOT_FOUND, "this indicates that the file specified was not found") \
    X(CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND, "this indicates that a link to a shared object failed to resolve") \
    X(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED, "this indicates that initialization of a shared object failed") \
    X(CUDA_ERROR_OPERATING_SYSTEM, "this indicates that an OS call failed") \
    X(CUDA_ERROR_INVALID_HANDLE, "invalid resource handle") \
    X(CUDA_ERROR_ILLEGAL_STATE, "this indicates that a resource required by the API call is not in a valid state to") \
    X(CUDA_ERROR_LOSSY_QUERY, "this indicates an attempt was made to introspect an object in a way that would discard") \
    X(CUDA_ERROR_NOT_FOUND, "named symbol not found") \
    X(CUDA_ERROR_NOT_READY, "this indicates that asynchronous operations issued previously have not completed yet") \
    X(CUDA_ERROR_ILLEGAL_ADDRESS, "while executing a kernel, the device encountered a load or store instruction on an") \
    X(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "this indicates that a launch did not occur because it did not have appropriate resources") \
    X(CUDA_ERROR_LAUNCH_TIMEOUT, "this indicates that the device kernel took too long to execute") \
    X(CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING, "this error indicates a kernel launch that uses an incompatible texturing mode") \
    X(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "this error indicates that a call to cuCtxEnablePeerAccess() is trying to re-enable peer") \
    X(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, "this error indicates that cuCtxDisablePeerAccess() is trying to disable peer access which") \
    X(CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE, "this error indicates that the primary context for the specified device has already been") \
    X(CUDA_ERROR_CONTEXT_IS_DESTROYED, "this error indicates that the context current to the calling thread has been destroyed") \
    X(CUDA_ERROR_ASSERT, "a device-side assert triggered during kernel execution") \
    X(CUDA_ERROR_TOO_MANY_PEERS, "this error indicates that the hardware resources required to enable peer access have been") \
    X(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "this error indicates that the memory range passed to cuMemHostRegister() has already been") \
    X(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "this error indicates that the pointer passed to cuMemHostUnregister() does not correspond") \
    X(CUDA_ERROR_HARDWARE_STACK_ERROR, "while executing a kernel, the device encountered a stack error") \
    X(CUDA_ERROR_ILLEGAL_INSTRUCTION, "while executing a kernel, the device encountered an illegal instruction") \
    X(CUDA_ERROR_MISALIGNED_ADDRESS, "while executing a kernel, the device encountered a load or store instruction on a memory") \
    X(CUDA_ERROR_INVALID_ADDRESS_SPACE, "while executing a kernel, the device encountered an instruction which can only operate on") \
    X(CUDA_ERROR_INVALID_PC, "while executing a kernel, the device program counter wrapped its address space") \
    X(CUDA_ERROR_LAUNCH_FAILED, "an exception occurred on the device while executing a kernel") \
    X(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE, "this error indicates that the number of blocks launched per grid for a kernel that was") \
    X(CUDA_ERROR_TENSOR_MEMORY_LEAK, "an exception occurred on the device while exiting a kernel using tensor memory: the") \
    X(CUDA_ERROR_NOT_PERMITTED, "this error indicates that the attempted operation is not permitted") \
    X(CUDA_ERROR_NOT_SUPPORTED, "operation not supported") \
    X(CUDA_ERROR_SYSTEM_NOT_READY, "this error indicates that the system is not yet ready to start any CUDA work") \
    X(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, "this error indicates that there is a mismatch between the versions of the display driver") \
    X(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE, "this error indicates that the system was upgraded to run with forward compatibility but") \
    X(CUDA_ERROR_MPS_CONNECTION_FAILED, "this error indicates that the MPS client failed to connect to the MPS control daemon or") \
    X(CUDA_ERROR_MPS_RPC_FAILURE, "this error indicates that the remote procedural call between the MPS server and the MPS") \
    X(CUDA_ERROR_MPS_SERVER_NOT_READY, "this error indicates that the MPS server is not ready to accept new MPS client requests") \
    X(CUDA_ERROR_MPS_MAX_CLIENTS_REACHED, "this error indicates that the hardware resources required to create MPS client have been") \
    X(CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED, "this error indicates the the hardware resources required to support device connections") \
    X(CUDA_ERROR_MPS_CLIENT_TERMINATED, "this error indicates that the MPS client has been terminated by the server") \
    X(CUDA_ERROR_CDP_NOT_SUPPORTED, "this error indicates that the module is using CUDA Dynamic Parallelism, but the current") \
    X(CUDA_ERROR_CDP_VERSION_MISMATCH, "this error indicates that a module contains an unsupported interaction between different") \
    X(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "this error indicates that the operation is not permitted when the stream is capturing") \
    X(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "this error indicates that the current capture sequence on the stream has been invalidated") \
    X(CUDA_ERROR_STREAM_CAPTURE_MERGE, "this error indicates that the operation would have resulted in a merge of two independent") \
    X(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "this error indicates that the capture was not initiated in this stream") \
    X(CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "this error indicates that the capture sequence contains a fork that was not joined to the") \
    X(CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "this error indicates that a dependency would have been created which crosses the capture") \
    X(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "this error indicates a disallowed implicit dependency on a current capture sequence from") \
    X(CUDA_ERROR_CAPTURED_EVENT, "this error indicates that the operation is not permitted on an event which was last") \
    X(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "a stream capture sequence not initiated with the CU_STREAM_CAPTURE_MODE_RELAXED argument") \
    X(CUDA_ERROR_TIMEOUT, "this error indicates that the timeout specified for the wait operation has lapsed") \
    X(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE, "this error indicates that the graph update was not performed because it included changes") \
    X(CUDA_ERROR_EXTERNAL_DEVICE, "this indicates that an async error has occurred in a device outside of CUDA") \
    X(CUDA_ERROR_INVALID_CLUSTER_SIZE, "indicates a kernel launch error due to cluster misconfiguration") \
    X(CUDA_ERROR_FUNCTION_NOT_LOADED, "indiciates a function handle is not loaded when calling an API that requires a loaded") \
    X(CUDA_ERROR_INVALID_RESOURCE_TYPE, "this error indicates one or more resources passed in are not valid resource types for the") \
    X(CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION, "this error indicates one or more resources are insufficient or non-applicable for the") \
    X(CUDA_ERROR_KEY_ROTATION, "this error indicates that an error happened during the key rotation sequence") \
    X(CUDA_ERROR_UNKNOWN, "unknown error")

typedef struct {
    CUresult code;
    const char *name, *msg;
} fc_error;

#define FC_ERROR_ROW(code, msg) { code, #code, msg },
static const fc_error g_errors[] = { FC_ERRORS(FC_ERROR_ROW) };

static const fc_error *find(CUresult code)
{
    for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++)
        if (g_errors[i].code == code)
            return &g_errors[i];
    return NULL;
}

/* Both work before cuInit. Unknown code: *pStr = NULL, INVALID_VALUE. */
CUresult cuGetErrorName(CUresult error, const char **pStr)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    const fc_error *e = find(error);
    *pStr = e ? e->name : NULL;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult error, const char **pStr)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    const fc_error *e = find(error);
    *pStr = e ? e->msg : NULL;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
