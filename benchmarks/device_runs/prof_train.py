import sys, torch, torch.nn.functional as F
from attnlab import ModelConfig, build_model
from attnlab.presets import preset
d = preset("shakespeare-384"); d["mixer"] = sys.argv[1]
m = build_model(ModelConfig.from_dict(d), device="cuda")
opt = torch.optim.AdamW(m.parameters(), fused=True)
ids = torch.randint(0, 65, (16, 1025), device="cuda")
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lg = m(ids[:, :-1])
    F.cross_entropy(lg.float().flatten(0,1), ids[:,1:].flatten()).backward(); opt.step(); opt.zero_grad()
for _ in range(3): step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as p:
    for _ in range(2): step()
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
