"""Eager vs ``torch.compile(dynamic=True)`` for a MiniLM bf16-autocast training step on CPU: the seconds of the
first two steps (compilation) and the mean step time over 30 more, on random token batches of 32 with lengths
16-64 and a little padding (benchmarks/step_profile.py uses the real data; this asks only whether inductor's
kernels beat eager ones for this step).

    HF_HUB_OFFLINE=1 python benchmarks/compile_step.py eager
    HF_HUB_OFFLINE=1 python benchmarks/compile_step.py compile      # needs a C++ compiler (inductor)
"""
import os, sys, time, random
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
torch.set_num_threads(2)
from transformers import AutoModelForSequenceClassification
import training as B
mode = sys.argv[1] if len(sys.argv) > 1 else "eager"
if mode not in ("eager", "compile"):
    sys.exit("compile_step.py: eager or compile")
torch.manual_seed(0); random.seed(0)
model = AutoModelForSequenceClassification.from_pretrained(B.minilm_dir(), num_labels=3, dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
lengths = [random.randint(16, 64) for _ in range(60)]
def batch(L, n=32):
    ids = torch.randint(1000, 20000, (n, L)); mask = torch.ones(n, L, dtype=torch.long)
    for i in range(n):
        cut = random.randint(max(1, L - 6), L); mask[i, cut:] = 0
    return ids, mask, torch.randint(0, 3, (n,))
def step(m, ids, mask, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(input_ids=ids, attention_mask=mask).logits.float()
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step(); opt.zero_grad()
    return loss
fwd = model
if mode == "compile":
    fwd = torch.compile(model, dynamic=True)
t0 = time.perf_counter()
for L in (40, 56):  # warm-up / compile on two shapes
    step(fwd, *batch(L))
print(f"{mode}: first two steps {time.perf_counter() - t0:.1f} s", flush=True)
times = []
for L in lengths[:30]:
    b = batch(L)
    t = time.perf_counter(); step(fwd, *b); times.append(time.perf_counter() - t)
print(f"{mode}: mean step {1000 * sum(times) / len(times):.1f} ms over {len(times)} steps (mean L {sum(lengths[:30]) / 30:.0f})")
