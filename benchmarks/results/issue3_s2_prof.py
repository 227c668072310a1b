import sys, torch, torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from attnlab import ModelConfig, build_model
from attnlab.presets import preset
name, impl = sys.argv[1], sys.argv[2]
d = preset("shakespeare-384"); d["mixer"] = name
d.setdefault("mixer_options", {})[name] = {"impl": impl}
model = build_model(ModelConfig.from_dict(d), device="cuda")
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, 65, (16, 1025), device="cuda")
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(4): step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(2): step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
