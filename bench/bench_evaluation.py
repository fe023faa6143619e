"""Benchmark `evaluate_embeddings` at Stanford Online Products scale against pytorch-metric-learning.

Synthetic embeddings with the shape of the SOP test split (60,502 x 512 float32,
11,316 classes of 2-12 images) are written to .npy files. Each implementation then
runs in its own fresh subprocess, so that its peak resident memory (getrusage
ru_maxrss) is measured alone:

- ours: `hdml_tf.evaluation` with the faiss backend (or `--ours-backend tensorflow`),
  R@{1,10,100,1000}, MAP@R, R-Precision, then k-means (20 iterations, seed 0), NMI and
  F1. These are the steps of `evaluate_embeddings`, timed separately.
- pml: pytorch-metric-learning's `AccuracyCalculator` (k=1000, CPU, FaissKNN,
  FaissKMeans with the same niter and seed as ours) from a separate virtual
  environment, so torch never enters the project environment. R@K for K > 1 is a
  small subclass metric (any of the first K neighbours matches); R@1 is PML's
  precision_at_1. PML has no F1, so F1 of PML's clusters is computed here.

The comparison checks every retrieval metric to 1e-6. NMI and F1 depend on the
k-means result, so the two cluster assignments are compared, and PML's clustering is
also scored with our NMI and F1.

Usage, from the repository root (the PML environment is set up once):
    python -m venv /tmp/pml-venv
    /tmp/pml-venv/bin/pip install torch==2.13.0 pytorch-metric-learning faiss-cpu
    nice -n 10 python bench/bench_evaluation.py --runs 3 --time-raw-faiss
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOP_TEST_IMAGES = 60_502
SOP_TEST_CLASSES = 11_316
EMBEDDING_DIM = 512
RECALL_KS = (1, 10, 100, 1000)
KMEANS_ITERATIONS = 20
KMEANS_SEED = 0
RETRIEVAL_METRICS = tuple(f"recall@{k}" for k in RECALL_KS) + ("map@r", "r_precision")
AGREEMENT_TOLERANCE = 1e-6

# Class-size distribution on 2..12 images (mean about 5.3, as in the SOP test split:
# 60,502 images / 11,316 classes = 5.35).
_CLASS_SIZE_WEIGHTS = {2: 22, 3: 17, 4: 14, 5: 12, 6: 9, 7: 7, 8: 6, 9: 5, 10: 4, 11: 3, 12: 1}


def make_sop_like_embeddings(
    seed: int, noise: float = 0.09
) -> tuple[np.ndarray, np.ndarray]:
    """Draw clustered, L2-normalised float32 embeddings [60502, 512] and int64 labels.

    Class centres are unit vectors grouped around 12 super-class directions, because
    SOP has 12 product categories. Each image is its centre plus isotropic Gaussian
    noise with standard deviation `noise` per dimension. Class sizes follow
    _CLASS_SIZE_WEIGHTS and are then adjusted one image at a time, within 2..12, until
    they sum to exactly 60,502. Rows are shuffled.
    """
    rng = np.random.default_rng(seed)
    sizes_range = np.array(list(_CLASS_SIZE_WEIGHTS))
    weights = np.array(list(_CLASS_SIZE_WEIGHTS.values()), dtype=np.float64)
    sizes = rng.choice(sizes_range, size=SOP_TEST_CLASSES, p=weights / weights.sum())
    surplus = int(sizes.sum()) - SOP_TEST_IMAGES
    while surplus != 0:
        index = rng.integers(SOP_TEST_CLASSES)
        if surplus > 0 and sizes[index] > 2:
            sizes[index] -= 1
            surplus -= 1
        elif surplus < 0 and sizes[index] < 12:
            sizes[index] += 1
            surplus += 1

    super_classes = rng.standard_normal((12, EMBEDDING_DIM)).astype(np.float32)
    super_of_class = rng.integers(12, size=SOP_TEST_CLASSES)
    centres = 0.7 * super_classes[super_of_class] + rng.standard_normal(
        (SOP_TEST_CLASSES, EMBEDDING_DIM)
    ).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    labels = np.repeat(np.arange(SOP_TEST_CLASSES), sizes)
    embeddings = centres[labels] + noise * rng.standard_normal(
        (SOP_TEST_IMAGES, EMBEDDING_DIM)
    ).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

    order = rng.permutation(SOP_TEST_IMAGES)
    return np.ascontiguousarray(embeddings[order]), labels[order].astype(np.int64)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------
# Workers: each runs in a fresh process and writes one JSON file.
# ---------------------------------------------------------------------------


def run_ours(workdir: Path, backend: str = "faiss") -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hdml_tf.evaluation import (
        cluster_embeddings,
        evaluate_embeddings,
        normalized_mutual_info,
        pair_f1_score,
    )
    from hdml_tf.evaluation.neighbours import l2_normalize

    embeddings = np.load(workdir / "embeddings.npy")
    labels = np.load(workdir / "labels.npy")

    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = evaluate_embeddings(
        embeddings, labels, RECALL_KS, compute_clustering=False, backend=backend
    )
    retrieval_seconds = time.perf_counter() - start
    retrieval_cpu_seconds = time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    unit = l2_normalize(embeddings).astype(np.float32)
    num_classes = int(np.unique(labels).size)
    clusters = cluster_embeddings(
        unit, num_classes, seed=KMEANS_SEED, backend=backend, n_iter=KMEANS_ITERATIONS
    )
    metrics["nmi"] = normalized_mutual_info(labels, clusters)
    metrics["f1"] = pair_f1_score(labels, clusters)
    clustering_seconds = time.perf_counter() - start
    clustering_cpu_seconds = time.process_time() - cpu_start

    np.save(workdir / "clusters_ours.npy", clusters)
    return {
        "backend": backend,
        "metrics": metrics,
        "seconds": {
            "retrieval": retrieval_seconds,
            "clustering": clustering_seconds,
            "total": retrieval_seconds + clustering_seconds,
        },
        "cpu_seconds": {
            "retrieval": retrieval_cpu_seconds,
            "clustering": clustering_cpu_seconds,
            "total": retrieval_cpu_seconds + clustering_cpu_seconds,
        },
        "peak_rss_mib": peak_rss_mib(),
    }


def run_raw_faiss(workdir: Path) -> dict:
    """Time one plain faiss IndexFlatL2 search of every row for k = 1001 neighbours.

    This is the search that PML's FaissKNN runs, without exact ordering or metrics,
    and so a lower bound for the retrieval part of both implementations.
    """
    import faiss

    embeddings = np.load(workdir / "embeddings.npy")
    start, cpu_start = time.perf_counter(), time.process_time()
    index = faiss.IndexFlatL2(embeddings.shape[1])
    index.add(embeddings)
    index.search(embeddings, max(RECALL_KS) + 1)
    return {
        "seconds": {"total": time.perf_counter() - start},
        "cpu_seconds": {"total": time.process_time() - cpu_start},
        "peak_rss_mib": peak_rss_mib(),
        "metrics": {},
    }


def run_pml(workdir: Path) -> dict:
    import pytorch_metric_learning
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKMeans, FaissKNN

    timings = {"knn": 0.0, "kmeans": 0.0, "knn_cpu": 0.0, "kmeans_cpu": 0.0}
    saved = {}

    class TimedKNN(FaissKNN):
        def __call__(self, *args, **kwargs):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = super().__call__(*args, **kwargs)
            timings["knn"] += time.perf_counter() - start
            timings["knn_cpu"] += time.process_time() - cpu_start
            return result

    class TimedKMeans(FaissKMeans):
        def __call__(self, *args, **kwargs):
            start, cpu_start = time.perf_counter(), time.process_time()
            clusters = super().__call__(*args, **kwargs)
            timings["kmeans"] += time.perf_counter() - start
            timings["kmeans_cpu"] += time.process_time() - cpu_start
            saved["clusters"] = clusters.cpu().numpy()
            return clusters

    class RecallCalculator(AccuracyCalculator):
        """AccuracyCalculator plus recall_at_K: a hit if any of the first K neighbours matches."""

        def requires_knn(self):
            return super().requires_knn() + [f"recall_at_{k}" for k in RECALL_KS[1:]]

    def make_recall(k):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            neighbours = knn_labels[not_lone_query_mask][:, :k]
            queries = query_labels[not_lone_query_mask]
            return (neighbours == queries[:, None]).any(dim=1).double().mean().item()

        return calculate

    for k in RECALL_KS[1:]:
        setattr(RecallCalculator, f"calculate_recall_at_{k}", make_recall(k))

    embeddings = torch.from_numpy(np.load(workdir / "embeddings.npy"))
    labels = torch.from_numpy(np.load(workdir / "labels.npy"))
    calculator = RecallCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI")
        + tuple(f"recall_at_{k}" for k in RECALL_KS[1:]),
        k=max(RECALL_KS),
        device=torch.device("cpu"),
        knn_func=TimedKNN(),
        kmeans_func=TimedKMeans(niter=KMEANS_ITERATIONS, seed=KMEANS_SEED),
    )

    start, cpu_start = time.perf_counter(), time.process_time()
    accuracies = calculator.get_accuracy(embeddings, labels)
    total_seconds = time.perf_counter() - start
    total_cpu_seconds = time.process_time() - cpu_start

    np.save(workdir / "clusters_pml.npy", saved["clusters"].astype(np.int64))
    metrics = {"recall@1": accuracies["precision_at_1"]}
    for k in RECALL_KS[1:]:
        metrics[f"recall@{k}"] = accuracies[f"recall_at_{k}"]
    metrics["map@r"] = accuracies["mean_average_precision_at_r"]
    metrics["r_precision"] = accuracies["r_precision"]
    metrics["nmi"] = accuracies["NMI"]
    return {
        "metrics": {name: float(value) for name, value in metrics.items()},
        "seconds": {
            "knn_search": timings["knn"],
            "kmeans": timings["kmeans"],
            "total": total_seconds,
        },
        "cpu_seconds": {
            "knn_search": timings["knn_cpu"],
            "kmeans": timings["kmeans_cpu"],
            "total": total_cpu_seconds,
        },
        "peak_rss_mib": peak_rss_mib(),
        "versions": {
            "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__,
        },
    }


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_worker(python: str, kind: str, workdir: Path) -> dict:
    """Run one worker in a fresh process and return its JSON result."""
    output = workdir / f"result_{kind}.json"
    output.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    completed = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", kind, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0 or not output.exists():
        raise RuntimeError(
            f"{kind} worker ({python}) failed with exit code {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    result = json.loads(output.read_text())
    # 1-minute load averages of the whole machine, which other processes share.
    result["load_average_1min"] = [load_before, os.getloadavg()[0]]
    return result


def machine_description() -> dict:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(total_kib / 2**20, 1),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def summarise(runs: list[dict]) -> dict:
    """Median of each timing, maximum peak RSS, metrics of the first run."""

    def medians(field: str) -> dict:
        return {
            name: statistics.median(run[field][name] for run in runs)
            for name in runs[0][field]
        }

    return {
        "runs": len(runs),
        "median_seconds": medians("seconds"),
        "median_cpu_seconds": medians("cpu_seconds"),
        "all_total_seconds": [run["seconds"]["total"] for run in runs],
        "load_average_1min_before_after": [run["load_average_1min"] for run in runs],
        "max_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "metrics": runs[0]["metrics"],
    }


def compare(ours: dict, pml: dict, workdir: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hdml_tf.evaluation import normalized_mutual_info, pair_f1_score

    labels = np.load(workdir / "labels.npy")
    clusters_ours = np.load(workdir / "clusters_ours.npy")
    clusters_pml = np.load(workdir / "clusters_pml.npy")

    differences = {
        name: abs(ours["metrics"][name] - pml["metrics"][name]) for name in RETRIEVAL_METRICS
    }
    return {
        "retrieval_abs_differences": differences,
        "retrieval_agree": all(value <= AGREEMENT_TOLERANCE for value in differences.values()),
        "same_cluster_assignment": bool(np.array_equal(clusters_ours, clusters_pml)),
        "nmi_ours_clusters": ours["metrics"]["nmi"],
        "nmi_pml_clusters_pml_code": pml["metrics"]["nmi"],
        "nmi_pml_clusters_our_code": normalized_mutual_info(labels, clusters_pml),
        "f1_ours_clusters": ours["metrics"]["f1"],
        "f1_pml_clusters_our_code": pair_f1_score(labels, clusters_pml),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per implementation")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/hdml_tf_bench_evaluation"),
        help="folder for the .npy inputs, cluster assignments and JSON results",
    )
    parser.add_argument(
        "--pml-python",
        default="/tmp/pml-venv/bin/python",
        help="Python interpreter of the environment with pytorch-metric-learning",
    )
    parser.add_argument("--skip-pml", action="store_true", help="run only our implementation")
    parser.add_argument(
        "--time-raw-faiss",
        action="store_true",
        help="also time a plain faiss k=1001 search of all rows in each run",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic embeddings")
    parser.add_argument(
        "--ours-backend",
        choices=("faiss", "tensorflow"),
        default="faiss",
        help="backend of our implementation (tensorflow also means scikit-learn k-means)",
    )
    parser.add_argument(
        "--worker",
        choices=("ours", "ours_tensorflow", "pml", "raw_faiss"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()

    if args.worker:
        workers = {
            "ours": run_ours,
            "ours_tensorflow": lambda workdir: run_ours(workdir, backend="tensorflow"),
            "pml": run_pml,
            "raw_faiss": run_raw_faiss,
        }
        result = workers[args.worker](args.workdir)
        (args.workdir / f"result_{args.worker}.json").write_text(json.dumps(result, indent=2))
        return

    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_description()

    embeddings, labels = make_sop_like_embeddings(args.seed)
    np.save(args.workdir / "embeddings.npy", embeddings)
    np.save(args.workdir / "labels.npy", labels)
    print(f"wrote {embeddings.shape} embeddings, {np.unique(labels).size} classes", flush=True)

    # Alternate the implementations so that changes in machine load hit both.
    ours_runs, pml_runs, raw_faiss_runs = [], [], []
    for run in range(args.runs):
        ours_kind = "ours" if args.ours_backend == "faiss" else "ours_tensorflow"
        ours_runs.append(run_worker(sys.executable, ours_kind, args.workdir))
        print(f"run {run + 1} ours: {ours_runs[-1]['seconds']}", flush=True)
        if not args.skip_pml:
            pml_runs.append(run_worker(args.pml_python, "pml", args.workdir))
            print(f"run {run + 1} pml:  {pml_runs[-1]['seconds']}", flush=True)
        if args.time_raw_faiss:
            raw_faiss_runs.append(run_worker(sys.executable, "raw_faiss", args.workdir))
            print(f"run {run + 1} raw faiss: {raw_faiss_runs[-1]['seconds']}", flush=True)

    summary = {
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine | {"load_average_at_end": os.getloadavg()},
        "ours": summarise(ours_runs) | {"backend": args.ours_backend},
    }
    if raw_faiss_runs:
        summary["raw_faiss_search"] = summarise(raw_faiss_runs)
    if pml_runs:
        summary["pml"] = summarise(pml_runs) | {"versions": pml_runs[0]["versions"]}
        summary["comparison"] = compare(ours_runs[-1], pml_runs[-1], args.workdir)
        summary["time_ratio_pml_over_ours"] = (
            summary["pml"]["median_seconds"]["total"] / summary["ours"]["median_seconds"]["total"]
        )
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
