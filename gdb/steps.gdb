# steps.gdb: a breakpoint on each step function of kvm_hello.hpp, in the
# order of its step table. `make gdb` loads it; then `continue` goes from
# step to step, in the order main.cpp calls them, and `next`, `step`, `print`
# and `bt` work as usual. Lesson 1 calls steps 1 to 9 only; lesson 2
# (`make gdb LESSON=2`) calls all fifteen, in KVM's order: 1-5, 10, 11, 6-8,
# 13, 12, 14, 9, and 15 from inside 9 (when the guest rings its doorbell).
# Lesson 3 (`make gdb LESSON=3`) adds 16 to 18: each vCPU's thread (gdb's
# `info threads` names them "vcpu 0", "vcpu 1") stops at run_guest.
set pagination off
set confirm off
# The code is in the ELF file: no need to read it from the (emulated) target.
set trust-readonly-sections on
# SIGUSR1 is kvm-hello's kick (VcpuStopper, stop_vcpus): it takes a vCPU's
# thread out of KVM_RUN. It is kvm-hello's to handle, not a stop of ours.
handle SIGUSR1 nostop noprint pass
break kvm_hello::open_kvm
break kvm_hello::check_api_version
break kvm_hello::check_capabilities
break kvm_hello::create_vm
break kvm_hello::setup_guest_memory
break kvm_hello::create_vcpu
break kvm_hello::init_vcpu
break kvm_hello::set_boot_registers
break kvm_hello::run_guest
# Lesson 2's steps (Part II of kvm_hello.hpp):
break kvm_hello::probe_vgic
break kvm_hello::create_vgic
break kvm_hello::init_vgic
break kvm_hello::read_timer_irq
break kvm_hello::attach_irqfd
break kvm_hello::inject_spi
# Lesson 3's steps (Part III of kvm_hello.hpp):
break kvm_hello::read_mp_state
break kvm_hello::start_vcpu_thread
break kvm_hello::stop_vcpus
