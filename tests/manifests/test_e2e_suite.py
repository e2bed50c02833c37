"""The opt-in cluster suite (tests/e2e, `make e2e`) can only run where a cluster is, so what
can be checked here is: it stays out of a plain run, `make e2e` refuses without a cluster,
and the Experiments it applies are ones the CRD and the analytics accept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from analytics.parse import parse_experiment
from tests.e2e import test_cluster as e2e
from tests.manifests.test_manifests import rejections

ROOT = Path(__file__).resolve().parents[2]


def test_the_experiments_it_applies_are_accepted() -> None:
    good = yaml.safe_load(e2e.experiment("e2e-good"))
    bad = yaml.safe_load(
        e2e.experiment("e2e-bad", metric="arbiter-system/mean-latency", upperLimit="0.001")
    )
    for doc in (good, bad):
        assert rejections("experiments", doc) == []
        parse_experiment(doc, require_versions=False)
    assert bad["spec"]["criteria"]["objectives"] == [
        {"metric": "arbiter-system/mean-latency", "upperLimit": "0.001"}
    ]


def test_its_samples_exist() -> None:
    for sample in ("namespace.yaml", "sklearn-iris.yaml", "sklearn-iris-canary.yaml"):
        assert (ROOT / "samples/kserve" / sample).is_file()


def test_the_image_is_replaced_in_every_function() -> None:
    rendered = yaml.safe_dump_all(
        yaml.safe_load(p.read_text())
        for p in sorted((ROOT / "config/functions").glob("[a-z]*.yaml"))
        if "kustomization" not in p.name
    )
    os.environ["ARBITER_IMAGE"] = "registry.example/arbiter@sha256:" + "0" * 64
    try:
        docs = list(yaml.safe_load_all(e2e.with_image(rendered)))
    finally:
        del os.environ["ARBITER_IMAGE"]
    images = {c["image"] for d in docs for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example/arbiter@sha256:" + "0" * 64}
    assert len(docs) == 4


def test_a_plain_run_leaves_it_out_and_make_e2e_needs_a_cluster() -> None:
    plain = subprocess.run(
        [".venv/bin/python", "-m", "pytest", "--collect-only", "-q", "tests/e2e"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "2 deselected" in plain.stdout, plain.stdout
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    made = subprocess.run(
        ["make", "-s", "e2e"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert made.returncode == 2
    assert "set KUBECONFIG" in made.stderr
