# Shared by the bench scripts that print the machine with their figures; source it.

# cpu_line: "<model name>, <N> cores (<isa>)", isa the widest of avx512f and avx2 the CPU has
# (cpuinfo's flags line lists avx2 before avx512f, so its first match is not the widest).
cpu_line() {
  local isa="no avx2"
  if grep -qw avx512f /proc/cpuinfo; then isa=avx512f; elif grep -qw avx2 /proc/cpuinfo; then isa=avx2; fi
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores ($isa)"
}
