"""``python -m export.promote``: put a new router-model version on trial beside the serving one,
compare them, promote it through a guard, roll back. The release record lives in the router's
store (router_service/release.py); every router worker and replica follows it within seconds.

  status                      the release, and the versions Triton has loaded
  shadow VERSION [--share S]  VERSION scores a share S (default 1) of the prompts in the background,
                              logged beside the serving version's scores; it decides nothing
  canary VERSION --share S    VERSION decides for a share S of the prompts (by a hash of the prompt)
  report --data DIR           compare candidate and serving on held-out logged data (below)
  promote --data DIR          the report, then the candidate serves if the guard passes
  rollback                    the version serving before the last promotion serves again
  abort                       end the trial; the serving version alone decides
  pin [VERSION]               serve VERSION (default: the newest loaded), no guard: for a first set-up

The report scores the held-out prompts (``export.from_log``'s ``val.jsonl`` and ``models.json``:
the newest logged prompts graded for both targets, or any routing file) with both versions,
through Triton, and gives for each the APGR and the strong share that keeps 95% of the strong
model's quality; the score drift between them (rank correlation, mean change, and how the share
of prompts each sends strong at the policy's operating point differs); and, from the decision log,
the live shadow-trial pairs and the canary's own decisions. The guard passes unless the
candidate is worse beyond noise: a paired bootstrap over the held-out prompts (``--resamples``)
finds it worse on APGR, or in need of more strong traffic for 95% quality, in at least
``--confidence`` (default 95%) of the resamples; and there must be ``--min-prompts`` held-out
prompts (default 50). Exit codes: 0 done, 1 the guard refused, 2 a usage or state error.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from export import metrics
from export.data import load_models, load_routing_set
from router_service.classifier import ClassifierUnavailable
from router_service.classifier_client import ClassifierClient
from router_service.config import ClassifierConfig, RouterConfig, load_config
from router_service.release import Release, ReleaseBook
from router_service.store import Store, StoreUnavailable

BATCH = 64
QUALITY = 0.95


class ReleaseError(Exception):
    """A state the command cannot act on (exit code 2)."""


@dataclass(frozen=True)
class Scored:
    version: str
    scores: NDArray[np.float64]
    shares: NDArray[np.float64]  # the version's strong_share per prompt (NaN without a calibration)


def score_prompts(client: ClassifierClient, prompts: list[str], version: str) -> Scored:
    scores, shares = [], []
    for start in range(0, len(prompts), BATCH):
        for c in client.classify(prompts[start:start + BATCH], "release-report", version):
            scores.append(c.score)
            shares.append(np.nan if c.strong_share is None else c.strong_share)
    return Scored(version, np.asarray(scores), np.asarray(shares))


def _apgr_and_share(scores: NDArray[np.float64], weak: NDArray[np.float64], strong: NDArray[np.float64]
                    ) -> tuple[float, float]:
    return metrics.apgr(scores, weak, strong), metrics.strong_share_at(scores, weak, strong, QUALITY)


def bootstrap_deltas(serving: NDArray[np.float64], candidate: NDArray[np.float64], weak: NDArray[np.float64],
                     strong: NDArray[np.float64], resamples: int, seed: int = 0) -> tuple[NDArray[np.float64], ...]:
    """Candidate minus serving, APGR and strong share at 95% quality, over paired resamples of
    the prompts (NaN where a resample has no quality gap to recover)."""
    rng = np.random.default_rng(seed)
    n = len(weak)
    d_apgr, d_share = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        a_s, s_s = _apgr_and_share(serving[idx], weak[idx], strong[idx])
        a_c, s_c = _apgr_and_share(candidate[idx], weak[idx], strong[idx])
        d_apgr[i], d_share[i] = a_c - a_s, s_c - s_s
    return d_apgr, d_share


def _frac(values: NDArray[np.float64], test: NDArray[np.bool_]) -> float:
    valid = ~np.isnan(values)
    return float(test[valid].mean()) if valid.any() else float("nan")


def _num(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 4)


def live_drift(db: Path | None, classifier: str, serving: str, candidate: str, since: float, strong_target: str
               ) -> dict[str, Any]:
    """From the decision log: shadow-trial pairs (both versions' scores for the same requests) and
    the decisions each version made since the trial started."""
    if db is None or not db.is_file():
        return {"decision_log": None}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        pairs = np.asarray(conn.execute(
            "SELECT serving_score, candidate_score FROM trials WHERE classifier = ? AND serving_version = ? AND "
            "candidate_version = ? AND time >= ?", (classifier, serving, candidate, since)).fetchall(), dtype=float)
        by_version = {v: {"decisions": n, "strong_share": _num(s)} for v, n, s in conn.execute(
            "SELECT model_version, COUNT(*), AVG(target = ?) FROM decisions WHERE model_version IN (?, ?) AND "
            "time >= ? AND reason LIKE 'classifier%' GROUP BY model_version", (strong_target, serving, candidate, since))}
    out: dict[str, Any] = {"decision_log": str(db), "shadow_pairs": len(pairs), "decisions_by_version": by_version}
    if len(pairs):
        out["shadow_spearman"] = _num(metrics.spearman(pairs[:, 0], pairs[:, 1]))
        out["shadow_mean_abs_score_change"] = _num(float(np.abs(pairs[:, 1] - pairs[:, 0]).mean()))
    return out


def report(client: ClassifierClient, release: Release, data: Path, models_json: Path | None, db: Path | None,
           classifier: str, operating_share: float | None, strong_target: str, resamples: int, confidence: float,
           min_prompts: int) -> dict[str, Any]:
    if release.candidate is None:
        raise ReleaseError("no candidate on trial: start one with `shadow VERSION` or `canary VERSION`")
    serving_version = release.serving or (client.versions() or [""])[-1]
    val_file = data / "val.jsonl" if data.is_dir() else data
    models_file = models_json or (data if data.is_dir() else data.parent) / "models.json"
    held_out = load_routing_set(val_file, load_models(models_file))
    weak, strong = held_out.weak, held_out.strong
    try:
        serving = score_prompts(client, held_out.prompts, serving_version)
        candidate = score_prompts(client, held_out.prompts, release.candidate)
    except ClassifierUnavailable as exc:
        raise ReleaseError(f"Triton could not score with both versions: {exc}") from exc
    versions: dict[str, Any] = {}
    for role, s in (("serving", serving), ("candidate", candidate)):
        m = metrics.routing_metrics(s.scores, weak, strong)
        versions[role] = {"version": s.version, "apgr": _num(m.apgr), "strong_share_at_95": _num(m.strong_share_at_95),
                          "auc": _num(m.auc)}
    drift: dict[str, Any] = {
        "spearman": _num(metrics.spearman(serving.scores, candidate.scores)),
        "mean_abs_score_change": _num(float(np.abs(candidate.scores - serving.scores).mean())),
    }
    if operating_share is not None:
        drift["operating_strong_share"] = operating_share
        drift["sent_strong"] = {"serving": _num(_frac(serving.shares, serving.shares <= operating_share)),
                                "candidate": _num(_frac(candidate.shares, candidate.shares <= operating_share))}
    d_apgr, d_share = bootstrap_deltas(serving.scores, candidate.scores, weak, strong, resamples)
    worse_apgr = _frac(d_apgr, d_apgr < 0)
    worse_share = _frac(d_share, d_share > 0)
    reasons = []
    if len(weak) < min_prompts:
        reasons.append(f"only {len(weak)} held-out prompts (at least {min_prompts} needed: --min-prompts)")
    if not np.isnan(worse_apgr) and worse_apgr >= confidence:
        reasons.append(f"APGR is lower in {worse_apgr:.0%} of {resamples} resamples")
    if not np.isnan(worse_share) and worse_share >= confidence:
        reasons.append(f"the strong share for {QUALITY:.0%} quality is higher in {worse_share:.0%} of {resamples} "
                       "resamples")
    if np.isnan(worse_apgr):
        reasons.append("the held-out data shows no quality gap between the targets: nothing to compare on")
    return {
        "classifier": classifier, "held_out": {"file": str(val_file), "prompts": len(weak)},
        **versions, "drift": drift, "live": live_drift(db, classifier, serving_version, release.candidate,
                                                       release.trial_started, strong_target),
        "guard": {"resamples": resamples, "confidence": confidence,
                  "candidate_worse_apgr_share": _num(worse_apgr), "candidate_worse_strong_share_share": _num(worse_share),
                  "passed": not reasons, "reasons": reasons},
    }


def _print_report(r: dict[str, Any]) -> None:
    s, c, g = r["serving"], r["candidate"], r["guard"]
    print(f"held-out prompts: {r['held_out']['prompts']} ({r['held_out']['file']})")
    print(f"{'':<22}{'serving ' + s['version']:>16}{'candidate ' + c['version']:>16}")
    for key, label in (("apgr", "APGR"), ("strong_share_at_95", "strong share @95%"), ("auc", "AUC")):
        print(f"{label:<22}{str(s[key]):>16}{str(c[key]):>16}")
    print(f"score drift: {json.dumps(r['drift'])}")
    print(f"live: {json.dumps(r['live'])}")
    verdict = "PASSED (not worse beyond noise)" if g["passed"] else "REFUSED: " + "; ".join(g["reasons"])
    print(f"guard: {verdict}")


class Releases:
    """One classifier's release record, the store it lives in and the Triton that serves it."""

    def __init__(self, config: RouterConfig, classifier: ClassifierConfig) -> None:
        if not config.store.url:
            raise ReleaseError("releases live in the router's store: set store.url (ROUTER_STORE_URL)")
        self.name = classifier.name
        self.book = ReleaseBook(Store(config.store.url, config.store.prefix, max(config.store.timeout_s, 2.0)),
                                [classifier])
        self.client = ClassifierClient(config.triton.grpc_url, classifier.triton_model, "",
                                       max(config.triton.timeout_s, 30.0))

    def get(self) -> Release | None:
        return self.book.read(self.name)

    def put(self, release: Release) -> Release:
        self.book.write(self.name, release)
        return self.book.read(self.name) or release

    def loaded(self) -> list[str]:
        try:
            return self.client.versions()
        except ClassifierUnavailable as exc:
            raise ReleaseError(f"Triton does not serve the classifier: {exc}") from exc

    def require_loaded(self, *versions: str) -> None:
        loaded = self.loaded()  # one look at Triton for all of them
        for version in versions:
            if version not in loaded:
                raise ReleaseError(f"Triton has not loaded version {version} (loaded: {', '.join(loaded) or 'none'}); "
                                   "it loads the newest versions of the model repository (config.pbtxt "
                                   "version_policy)")

    def pinned(self) -> Release:
        """The record, or one pinned to the newest loaded version when there is none yet."""
        current = self.get()
        if current is not None:
            return current
        loaded = self.loaded()
        if not loaded:
            raise ReleaseError("Triton has no version of the classifier loaded")
        return Release(serving=loaded[-1], note=f"pinned {loaded[-1]}")


def _operating_share(config: RouterConfig, classifier: str) -> tuple[float | None, str]:
    """The default policy's (or the classifier's first policy's) strong share and strong target."""
    policies = [p for p in config.policies if p.classifier == classifier]
    policy = next((p for p in policies if p.name == config.default_policy), policies[0] if policies else None)
    if policy is None:
        return None, ""
    return policy.strong_share_setting, policy.targets[-1]


def run(a: argparse.Namespace) -> int:
    config = load_config(a.config)
    name = a.classifier or config.classifiers[0].name
    classifier = next((c for c in config.classifiers if c.name == name), None)
    if classifier is None:
        raise ReleaseError(f"no classifier {name!r} in {a.config}")
    rel = Releases(config, classifier)
    cmd = a.command
    if cmd == "status":
        current = rel.get()
        loaded = rel.loaded()
        print(json.dumps({"classifier": name, "release": None if current is None else current.model_dump(),
                          "loaded_versions": loaded}, indent=2))
        if current is not None and current.serving and current.serving not in loaded:
            print(f"WARNING: the serving version {current.serving} is not loaded: the router fails open",
                  file=sys.stderr)
        return 0
    if cmd == "pin":
        version = a.version or (rel.loaded() or [""])[-1]
        rel.require_loaded(version)
        current = rel.get() or Release()
        previous = current.previous + [current.serving] if current.serving and current.serving != version \
            else current.previous
        done = rel.put(Release(serving=version, previous=previous, note=f"pinned {version} by hand"))
    elif cmd in ("shadow", "canary"):
        current = rel.pinned()
        if a.version == current.serving:
            raise ReleaseError(f"version {a.version} is the serving one")
        rel.require_loaded(a.version, current.serving)
        share = a.share if a.share is not None else 1.0
        # A shadow trial that turns into a canary is one trial: the report reads the log since its start.
        started = current.trial_started if current.candidate == a.version else time.time()
        done = rel.put(current.model_copy(update={"candidate": a.version, "mode": cmd, "share": share,
                                                  "trial_started": started,
                                                  "note": f"{cmd} trial of {a.version} on {share:.0%} of prompts"}))
    elif cmd in ("report", "promote"):
        current = rel.pinned()
        share, strong_target = _operating_share(config, name)
        db = a.decision_log or (Path(config.decision_log.path) if config.decision_log.path else None)
        result = report(rel.client, current, a.data, a.models_json, db, name, share, strong_target, a.resamples,
                        a.confidence, a.min_prompts)
        result["command"] = cmd
        if a.out is not None:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2) + "\n")
        _print_report(result)
        if cmd == "report":
            return 0
        if not result["guard"]["passed"] and not a.force:
            print("not promoted (--force promotes anyway)", file=sys.stderr)
            return 1
        assert current.candidate is not None
        forced = " (forced past the guard)" if not result["guard"]["passed"] else ""
        done = rel.put(Release(serving=current.candidate, previous=[*current.previous, current.serving],
                               note=f"promoted {current.candidate} over {current.serving}{forced}: APGR "
                                    f"{result['candidate']['apgr']} vs {result['serving']['apgr']} on "
                                    f"{result['held_out']['prompts']} held-out prompts"))
    elif cmd == "rollback":
        current = rel.get()
        if current is None or not current.previous:
            raise ReleaseError("nothing to roll back to: no earlier serving version on record")
        back = current.previous[-1]
        rel.require_loaded(back)
        done = rel.put(Release(serving=back, previous=current.previous[:-1],
                               note=f"rolled back from {current.serving} to {back}"))
    elif cmd == "abort":
        current = rel.pinned()
        if current.candidate is None:
            raise ReleaseError("no trial to end")
        done = rel.put(current.model_copy(update={"candidate": None, "note": f"ended the trial of {current.candidate}"}))
        print(f"The trial of {current.candidate} ended. Triton keeps the newest versions loaded: withdraw it from the "
              "model repository before exporting more (docs/kubernetes.md, section 5).", file=sys.stderr)
    else:  # argparse keeps this out
        raise ReleaseError(f"unknown command {cmd!r}")
    print(json.dumps(done.model_dump(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.promote", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, default=Path(os.environ.get("ROUTER_CONFIG", "config/router.yaml")),
                   help="the router's config (its store, Triton and classifier; ${ENV} expanded)")
    p.add_argument("--classifier", help="default: the config's first classifier")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    sub.add_parser("rollback")
    sub.add_parser("abort")
    pin = sub.add_parser("pin")
    pin.add_argument("version", nargs="?")
    for mode in ("shadow", "canary"):
        trial = sub.add_parser(mode)
        trial.add_argument("version")
        trial.add_argument("--share", type=float, required=mode == "canary")
    for cmd in ("report", "promote"):
        r = sub.add_parser(cmd)
        r.add_argument("--data", type=Path, required=True,
                       help="held-out routing data: export.from_log's output dir (val.jsonl, models.json) or a JSONL")
        r.add_argument("--models-json", type=Path, help="default: models.json beside the data")
        r.add_argument("--decision-log", type=Path, help="default: the config's decision_log.path")
        r.add_argument("--min-prompts", type=int, default=50)
        r.add_argument("--confidence", type=float, default=0.95)
        r.add_argument("--resamples", type=int, default=1000)
        r.add_argument("--out", type=Path, default=Path(".eval/release-report.json"))
        if cmd == "promote":
            r.add_argument("--force", action="store_true", help="promote even when the guard refuses")
    a = p.parse_args(argv)
    if getattr(a, "share", None) is not None and not 0.0 < a.share <= 1.0:
        p.error("--share must be in (0, 1]")
    try:
        return run(a)
    except StoreUnavailable as exc:
        print(f"export.promote: {exc}: is the router's store running (`make run` starts one) and is store.url "
              "(ROUTER_STORE_URL) its address?", file=sys.stderr)
        return 2
    except (ReleaseError, ValueError, OSError) as exc:
        print(f"export.promote: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
