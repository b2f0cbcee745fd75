//! Compile-time checks that the platform-neutral ABI in `abi.rs` matches
//! the SDK layouts and values as generated in windows-sys.

use crate::hv::whp::abi::{self, RegValue, exit, off, prop, reg};
use std::mem::{align_of, offset_of, size_of};
use windows_sys::Win32::System::Hypervisor as w;

const _: () = {
    assert!(size_of::<w::WHV_RUN_VP_EXIT_CONTEXT>() == abi::EXIT_CONTEXT_SIZE);
    assert!(offset_of!(w::WHV_RUN_VP_EXIT_CONTEXT, VpContext) == 8);
    assert!(offset_of!(w::WHV_RUN_VP_EXIT_CONTEXT, Anonymous) == off::UNION);
    assert!(8 + offset_of!(w::WHV_VP_EXIT_CONTEXT, ExecutionState) == off::EXECUTION_STATE);
    assert!(8 + offset_of!(w::WHV_VP_EXIT_CONTEXT, _bitfield) == off::INSTRUCTION_LENGTH);
    assert!(8 + offset_of!(w::WHV_VP_EXIT_CONTEXT, Cs) == off::CS);
    assert!(8 + offset_of!(w::WHV_VP_EXIT_CONTEXT, Rip) == off::RIP);
    assert!(8 + offset_of!(w::WHV_VP_EXIT_CONTEXT, Rflags) == off::RFLAGS);
    assert!(offset_of!(w::WHV_MEMORY_ACCESS_CONTEXT, InstructionBytes) == 4);
    assert!(offset_of!(w::WHV_MEMORY_ACCESS_CONTEXT, AccessInfo) == 20);
    assert!(offset_of!(w::WHV_MEMORY_ACCESS_CONTEXT, Gpa) == 24);
    assert!(offset_of!(w::WHV_MEMORY_ACCESS_CONTEXT, Gva) == 32);
    assert!(offset_of!(w::WHV_X64_IO_PORT_ACCESS_CONTEXT, InstructionBytes) == 4);
    assert!(offset_of!(w::WHV_X64_IO_PORT_ACCESS_CONTEXT, AccessInfo) == 20);
    assert!(offset_of!(w::WHV_X64_IO_PORT_ACCESS_CONTEXT, PortNumber) == 24);
    assert!(offset_of!(w::WHV_X64_IO_PORT_ACCESS_CONTEXT, Rax) == 32);
    assert!(offset_of!(w::WHV_X64_MSR_ACCESS_CONTEXT, MsrNumber) == 4);
    assert!(offset_of!(w::WHV_X64_MSR_ACCESS_CONTEXT, Rax) == 8);
    assert!(offset_of!(w::WHV_X64_MSR_ACCESS_CONTEXT, Rdx) == 16);
    assert!(offset_of!(w::WHV_X64_CPUID_ACCESS_CONTEXT, Rcx) == 8);
    assert!(offset_of!(w::WHV_X64_CPUID_ACCESS_CONTEXT, DefaultResultRax) == 32);
    assert!(offset_of!(w::WHV_X64_CPUID_ACCESS_CONTEXT, DefaultResultRcx) == 40);
    assert!(offset_of!(w::WHV_X64_CPUID_ACCESS_CONTEXT, DefaultResultRdx) == 48);
    assert!(offset_of!(w::WHV_X64_CPUID_ACCESS_CONTEXT, DefaultResultRbx) == 56);
    assert!(offset_of!(w::WHV_X64_SEGMENT_REGISTER, Limit) == 8);
    assert!(offset_of!(w::WHV_X64_SEGMENT_REGISTER, Selector) == 12);
    assert!(offset_of!(w::WHV_X64_SEGMENT_REGISTER, Anonymous) == 14);
    assert!(offset_of!(w::WHV_X64_TABLE_REGISTER, Limit) == 6);
    assert!(offset_of!(w::WHV_X64_TABLE_REGISTER, Base) == 8);
    assert!(size_of::<w::WHV_REGISTER_VALUE>() == size_of::<RegValue>());
    assert!(align_of::<RegValue>() == 16);
    assert!(size_of::<w::WHV_X64_CPUID_RESULT>() == 32);
    assert!(size_of::<w::WHV_INTERRUPT_CONTROL>() == 16);

    assert!(w::WHvX64RegisterRax == reg::RAX);
    assert!(w::WHvX64RegisterRcx == 1 && w::WHvX64RegisterRdx == 2 && w::WHvX64RegisterRbx == 3);
    assert!(w::WHvX64RegisterR15 == 15);
    assert!(w::WHvX64RegisterRip == reg::RIP && w::WHvX64RegisterRflags == reg::RFLAGS);
    assert!(
        w::WHvX64RegisterEs == reg::ES
            && w::WHvX64RegisterCs == reg::CS
            && w::WHvX64RegisterSs == reg::SS
    );
    assert!(
        w::WHvX64RegisterDs == reg::DS
            && w::WHvX64RegisterFs == reg::FS
            && w::WHvX64RegisterGs == reg::GS
    );
    assert!(w::WHvX64RegisterLdtr == reg::LDTR && w::WHvX64RegisterTr == reg::TR);
    assert!(w::WHvX64RegisterIdtr == reg::IDTR && w::WHvX64RegisterGdtr == reg::GDTR);
    assert!(
        w::WHvX64RegisterCr0 == reg::CR0
            && w::WHvX64RegisterCr2 == reg::CR2
            && w::WHvX64RegisterCr3 == reg::CR3
    );
    assert!(w::WHvX64RegisterCr4 == reg::CR4 && w::WHvX64RegisterCr8 == reg::CR8);
    assert!(w::WHvX64RegisterTsc == reg::TSC && w::WHvX64RegisterEfer == reg::EFER);
    assert!(
        w::WHvX64RegisterKernelGsBase == reg::KERNEL_GS_BASE
            && w::WHvX64RegisterApicBase == reg::APIC_BASE
    );
    assert!(w::WHvX64RegisterPat == reg::PAT && w::WHvX64RegisterSysenterCs == reg::SYSENTER_CS);
    assert!(
        w::WHvX64RegisterSysenterEip == reg::SYSENTER_EIP
            && w::WHvX64RegisterSysenterEsp == reg::SYSENTER_ESP
    );
    assert!(w::WHvX64RegisterStar == reg::STAR && w::WHvX64RegisterLstar == reg::LSTAR);
    assert!(w::WHvX64RegisterCstar == reg::CSTAR && w::WHvX64RegisterSfmask == reg::SFMASK);
    assert!(w::WHvX64RegisterMsrMtrrDefType == reg::MTRR_DEF_TYPE);
    assert!(w::WHvX64RegisterDeliverabilityNotifications == reg::DELIVERABILITY_NOTIFICATIONS);
    assert!(w::WHvX64RegisterDr0 == reg::DR0 && w::WHvX64RegisterDr1 == reg::DR1);
    assert!(w::WHvX64RegisterDr2 == reg::DR2 && w::WHvX64RegisterDr3 == reg::DR3);
    assert!(w::WHvX64RegisterDr6 == reg::DR6 && w::WHvX64RegisterDr7 == reg::DR7);
    assert!(w::WHvX64RegisterXCr0 == reg::XCR0 && w::WHvX64RegisterTscAux == reg::TSC_AUX);
    assert!(w::WHvRegisterPendingInterruption == reg::PENDING_INTERRUPTION);
    assert!(w::WHvRegisterInterruptState == reg::INTERRUPT_STATE);
    assert!(w::WHvRegisterPendingEvent == reg::PENDING_EVENT);
    assert!(w::WHvRegisterInternalActivityState == reg::INTERNAL_ACTIVITY_STATE);
    assert!(w::WHvX64PendingEventException == 0 && w::WHvX64PendingEventExtInt == 5);
    assert!(w::WHvVirtualProcessorStateTypeXsaveState == prop::STATE_XSAVE);
    assert!(w::WHvVirtualProcessorStateTypeInterruptControllerState2 == prop::STATE_LAPIC);
    assert!(
        windows_sys::Win32::Foundation::WHV_E_INSUFFICIENT_BUFFER == prop::E_INSUFFICIENT_BUFFER
    );

    assert!(w::WHvRunVpExitReasonNone as u32 == exit::NONE);
    assert!(w::WHvRunVpExitReasonMemoryAccess as u32 == exit::MEMORY_ACCESS);
    assert!(w::WHvRunVpExitReasonX64IoPortAccess as u32 == exit::IO_PORT_ACCESS);
    assert!(w::WHvRunVpExitReasonUnrecoverableException as u32 == exit::UNRECOVERABLE_EXCEPTION);
    assert!(w::WHvRunVpExitReasonInvalidVpRegisterValue as u32 == exit::INVALID_VP_REGISTER_VALUE);
    assert!(w::WHvRunVpExitReasonUnsupportedFeature as u32 == exit::UNSUPPORTED_FEATURE);
    assert!(w::WHvRunVpExitReasonX64InterruptWindow as u32 == exit::INTERRUPT_WINDOW);
    assert!(w::WHvRunVpExitReasonX64Halt as u32 == exit::HALT);
    assert!(w::WHvRunVpExitReasonX64ApicEoi as u32 == exit::APIC_EOI);
    assert!(w::WHvRunVpExitReasonX64MsrAccess as u32 == exit::MSR_ACCESS);
    assert!(w::WHvRunVpExitReasonX64Cpuid as u32 == exit::CPUID);
    assert!(w::WHvRunVpExitReasonException as u32 == exit::EXCEPTION);
    assert!(w::WHvRunVpExitReasonCanceled as u32 == exit::CANCELED);

    assert!(w::WHvCapabilityCodeHypervisorPresent == prop::CAP_HYPERVISOR_PRESENT);
    assert!(w::WHvCapabilityCodeProcessorClockFrequency == prop::CAP_PROCESSOR_CLOCK_FREQUENCY);
    assert!(w::WHvCapabilityCodeInterruptClockFrequency == prop::CAP_INTERRUPT_CLOCK_FREQUENCY);
    assert!(w::WHvPartitionPropertyCodeExtendedVmExits == prop::EXTENDED_VM_EXITS);
    assert!(w::WHvPartitionPropertyCodeX64MsrExitBitmap == prop::X64_MSR_EXIT_BITMAP);
    assert!(w::WHvPartitionPropertyCodeCpuidExitList == prop::CPUID_EXIT_LIST);
    assert!(w::WHvPartitionPropertyCodeCpuidResultList == prop::CPUID_RESULT_LIST);
    assert!(w::WHvPartitionPropertyCodeLocalApicEmulationMode == prop::LOCAL_APIC_EMULATION_MODE);
    assert!(w::WHvPartitionPropertyCodeProcessorCount == prop::PROCESSOR_COUNT);
    assert!(w::WHvX64LocalApicEmulationModeXApic as u32 == prop::LAPIC_MODE_XAPIC);
    assert!(
        w::WHvMapGpaRangeFlagRead == prop::MAP_READ
            && w::WHvMapGpaRangeFlagWrite == prop::MAP_WRITE
    );
    assert!(w::WHvMapGpaRangeFlagExecute == prop::MAP_EXECUTE);
    assert!(w::WHvTranslateGvaFlagValidateRead == prop::TRANSLATE_VALIDATE_READ);
    assert!(w::WHvTranslateGvaFlagValidateWrite == prop::TRANSLATE_VALIDATE_WRITE);
    assert!(w::WHvTranslateGvaFlagPrivilegeExempt == prop::TRANSLATE_PRIVILEGE_EXEMPT);
    assert!(w::WHvTranslateGvaResultSuccess == 0);
    assert!(windows_sys::Win32::Foundation::WHV_E_UNKNOWN_PROPERTY == prop::E_UNKNOWN_PROPERTY);
};
