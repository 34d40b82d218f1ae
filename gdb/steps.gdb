# steps.gdb: a breakpoint on each step function of kvm_hello.hpp, in the
# order main.cpp calls them. `make gdb` loads it; then `continue` goes from
# step to step, and `next`, `step`, `print` and `bt` work as usual.
set pagination off
set confirm off
# The code is in the ELF file: no need to read it from the (emulated) target.
set trust-readonly-sections on
break kvm_hello::open_kvm
break kvm_hello::check_api_version
break kvm_hello::check_capabilities
break kvm_hello::create_vm
break kvm_hello::setup_guest_memory
break kvm_hello::create_vcpu
break kvm_hello::init_vcpu
break kvm_hello::set_boot_registers
break kvm_hello::run_guest
