/*
 * Minimal bcryptprimitives.dll for running Rust test executables under
 * Debian's wine 8.0, which lacks this DLL. Rust's std (1.78+) imports
 * ProcessPrng from it for HashMap seeds; without it every .exe fails with
 * c0000135 before main. Real Windows has the DLL; this shim is for CI only.
 * ProcessPrng is implemented on RtlGenRandom (advapi32 SystemFunction036).
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
