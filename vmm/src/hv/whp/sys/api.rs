//! winhvplatform.dll, loaded at run time so the executable has no load-time
//! import of it (a missing optional feature must not stop the .exe).

use super::super::{NOT_INSTALLED, NOT_RUNNING};
use crate::hv::HvError;
use std::ffi::c_void;
use std::sync::OnceLock;
use windows_sys::Win32::System::Hypervisor::{
    WHV_CAPABILITY, WHV_CAPABILITY_CODE, WHV_INTERRUPT_CONTROL, WHV_MAP_GPA_RANGE_FLAGS,
    WHV_PARTITION_HANDLE, WHV_PARTITION_PROPERTY_CODE, WHV_REGISTER_NAME, WHV_REGISTER_VALUE,
    WHV_TRANSLATE_GVA_FLAGS, WHV_TRANSLATE_GVA_RESULT, WHvCapabilityCodeHypervisorPresent,
};
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};
use windows_sys::core::HRESULT;

type H = WHV_PARTITION_HANDLE;

type GetCapabilityFn =
    unsafe extern "system" fn(WHV_CAPABILITY_CODE, *mut c_void, u32, *mut u32) -> HRESULT;
type CreatePartitionFn = unsafe extern "system" fn(*mut H) -> HRESULT;
type PartitionFn = unsafe extern "system" fn(H) -> HRESULT;
type SetPropertyFn =
    unsafe extern "system" fn(H, WHV_PARTITION_PROPERTY_CODE, *const c_void, u32) -> HRESULT;
type MapGpaRangeFn =
    unsafe extern "system" fn(H, *const c_void, u64, u64, WHV_MAP_GPA_RANGE_FLAGS) -> HRESULT;
type VpFlagsFn = unsafe extern "system" fn(H, u32, u32) -> HRESULT;
type VpFn = unsafe extern "system" fn(H, u32) -> HRESULT;
type RunVpFn = unsafe extern "system" fn(H, u32, *mut c_void, u32) -> HRESULT;
type GetRegistersFn = unsafe extern "system" fn(
    H,
    u32,
    *const WHV_REGISTER_NAME,
    u32,
    *mut WHV_REGISTER_VALUE,
) -> HRESULT;
type SetRegistersFn = unsafe extern "system" fn(
    H,
    u32,
    *const WHV_REGISTER_NAME,
    u32,
    *const WHV_REGISTER_VALUE,
) -> HRESULT;
type TranslateGvaFn = unsafe extern "system" fn(
    H,
    u32,
    u64,
    WHV_TRANSLATE_GVA_FLAGS,
    *mut WHV_TRANSLATE_GVA_RESULT,
    *mut u64,
) -> HRESULT;
type GetVpStateFn = unsafe extern "system" fn(H, u32, i32, *mut c_void, u32, *mut u32) -> HRESULT;
type SetVpStateFn = unsafe extern "system" fn(H, u32, i32, *const c_void, u32) -> HRESULT;
type RequestInterruptFn =
    unsafe extern "system" fn(H, *const WHV_INTERRUPT_CONTROL, u32) -> HRESULT;

/// The WHP entry points we use.
#[allow(missing_debug_implementations)]
pub(crate) struct Api {
    pub get_capability: GetCapabilityFn,
    pub create_partition: CreatePartitionFn,
    pub setup_partition: PartitionFn,
    pub delete_partition: PartitionFn,
    pub set_partition_property: SetPropertyFn,
    pub map_gpa_range: MapGpaRangeFn,
    pub create_vp: VpFlagsFn,
    pub delete_vp: VpFn,
    pub run_vp: RunVpFn,
    pub cancel_run_vp: VpFlagsFn,
    pub get_vp_registers: GetRegistersFn,
    pub set_vp_registers: SetRegistersFn,
    pub translate_gva: TranslateGvaFn,
    pub request_interrupt: RequestInterruptFn,
    /// Windows 11 / Server 2022 and later; snapshots need them.
    pub get_vp_state: Option<GetVpStateFn>,
    pub set_vp_state: Option<SetVpStateFn>,
    /// Optional: suspends the partition's reference time until a vCPU runs.
    pub suspend_partition_time: Option<PartitionFn>,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded API, after checking that a hypervisor is present.
pub(crate) fn api() -> Result<&'static Api, HvError> {
    let api = API
        .get_or_init(load)
        .as_ref()
        .map_err(|e| HvError::Unavailable(e.clone()))?;
    let mut cap = WHV_CAPABILITY {
        HypervisorPresent: 0,
    };
    let mut written = 0u32;
    let size = std::mem::size_of::<WHV_CAPABILITY>() as u32;
    // SAFETY: `cap` is a writable WHV_CAPABILITY of `size` bytes.
    let hr = unsafe {
        (api.get_capability)(
            WHvCapabilityCodeHypervisorPresent,
            (&raw mut cap).cast(),
            size,
            &raw mut written,
        )
    };
    // SAFETY: the union was initialised above; HypervisorPresent is a plain BOOL.
    let present = unsafe { cap.HypervisorPresent };
    if hr < 0 || present == 0 {
        return Err(HvError::Unavailable(NOT_RUNNING.into()));
    }
    Ok(api)
}

/// Queries a u64-valued capability (frequencies); `None` if unknown.
pub(crate) fn capability_u64(api: &Api, code: WHV_CAPABILITY_CODE) -> Option<u64> {
    let mut cap = WHV_CAPABILITY {
        ProcessorClockFrequency: 0,
    };
    let mut written = 0u32;
    let size = std::mem::size_of::<WHV_CAPABILITY>() as u32;
    // SAFETY: `cap` is a writable WHV_CAPABILITY of `size` bytes.
    let hr = unsafe { (api.get_capability)(code, (&raw mut cap).cast(), size, &raw mut written) };
    // SAFETY: both frequency capabilities are a u64 at offset 0.
    let v = unsafe { cap.ProcessorClockFrequency };
    (hr >= 0 && v != 0).then_some(v)
}

fn load() -> Result<Api, String> {
    let name: Vec<u16> = "winhvplatform.dll\0".encode_utf16().collect();
    // SAFETY: `name` is a NUL-terminated UTF-16 string; only System32 is searched.
    let module = unsafe {
        LoadLibraryExW(
            name.as_ptr(),
            std::ptr::null_mut(),
            LOAD_LIBRARY_SEARCH_SYSTEM32,
        )
    };
    if module.is_null() {
        return Err(NOT_INSTALLED.into());
    }
    macro_rules! optional {
        ($name:literal, $ty:ty) => {{
            // SAFETY: `module` is loaded (and never freed); the name is NUL-terminated.
            let f = unsafe { GetProcAddress(module, concat!($name, "\0").as_ptr()) };
            // SAFETY: the export has the documented WHP signature of the field it is assigned to.
            f.map(|f| unsafe {
                std::mem::transmute::<unsafe extern "system" fn() -> isize, $ty>(f)
            })
        }};
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            // SAFETY: `module` is loaded (and never freed); the name is NUL-terminated.
            let f = unsafe { GetProcAddress(module, concat!($name, "\0").as_ptr()) };
            let Some(f) = f else {
                return Err(format!(
                    "winhvplatform.dll lacks {}; this Windows is too old for Krypton",
                    $name
                ));
            };
            // SAFETY: the export has the documented WHP signature of the field it is assigned to.
            unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, $ty>(f) }
        }};
    }
    Ok(Api {
        get_capability: sym!("WHvGetCapability", GetCapabilityFn),
        create_partition: sym!("WHvCreatePartition", CreatePartitionFn),
        setup_partition: sym!("WHvSetupPartition", PartitionFn),
        delete_partition: sym!("WHvDeletePartition", PartitionFn),
        set_partition_property: sym!("WHvSetPartitionProperty", SetPropertyFn),
        map_gpa_range: sym!("WHvMapGpaRange", MapGpaRangeFn),
        create_vp: sym!("WHvCreateVirtualProcessor", VpFlagsFn),
        delete_vp: sym!("WHvDeleteVirtualProcessor", VpFn),
        run_vp: sym!("WHvRunVirtualProcessor", RunVpFn),
        cancel_run_vp: sym!("WHvCancelRunVirtualProcessor", VpFlagsFn),
        get_vp_registers: sym!("WHvGetVirtualProcessorRegisters", GetRegistersFn),
        set_vp_registers: sym!("WHvSetVirtualProcessorRegisters", SetRegistersFn),
        translate_gva: sym!("WHvTranslateGva", TranslateGvaFn),
        request_interrupt: sym!("WHvRequestInterrupt", RequestInterruptFn),
        get_vp_state: optional!("WHvGetVirtualProcessorState", GetVpStateFn),
        set_vp_state: optional!("WHvSetVirtualProcessorState", SetVpStateFn),
        suspend_partition_time: optional!("WHvSuspendPartitionTime", PartitionFn),
    })
}

/// Turns a failed HRESULT into `HvError::Call`.
pub(crate) fn check(call: &'static str, hr: HRESULT) -> Result<(), HvError> {
    if hr >= 0 {
        Ok(())
    } else {
        Err(HvError::Call {
            call,
            source: std::io::Error::other(format!("HRESULT {:#010x}", hr as u32)),
        })
    }
}
