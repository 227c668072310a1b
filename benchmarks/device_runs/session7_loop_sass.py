"""Session 7: compile v3 launch configurations for sm_90 on the CPU machine (``session6b_spectral_regs.py``'s specs,
Triton 3.6's ptxas) and count the instructions, barriers, HMMA and shared-memory accesses of each loop body of the
SASS (the first loop is the block step, the second the hot window's), per thread:

    PYTHONPATH=/tmp/tr36/site:$PWD python benchmarks/device_runs/session7_loop_sass.py v3:32:32:1:2:4:2:CVT=1
"""
import sys, re, os, subprocess, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import session6b_spectral_regs as m
for spec in sys.argv[1:]:
    c = m.compile_one(spec)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    sass = subprocess.run([os.path.join(m.BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    ins = []
    for l in sass.splitlines():
        ma = re.match(r"\s+/\*([0-9a-f]{4,5})\*/\s+(.*?);", l)
        if ma: ins.append((int(ma.group(1), 16), ma.group(2)))
    for a, t in ins:
        mb = re.search(r"BRA\s+0x([0-9a-f]+)", t)
        if mb and int(mb.group(1), 16) < a and "ANY" not in t:
            lo = int(mb.group(1), 16)
            body = [x for aa, x in ins if lo <= aa <= a]
            cnt = lambda k: sum(k in x for x in body)
            print(f"  loop {lo:#x}-{a:#x}: {len(body)} instr, BAR {cnt('BAR.SYNC')}, HMMA {cnt('HMMA')}, LDS {cnt('LDS')}, STS {cnt('STS')}, SHFL {cnt('SHFL')}, LDG {cnt('LDG')}, MUFU {cnt('MUFU')}")
