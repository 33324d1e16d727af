"""benchmarks.tokenizer: throughput counts the quantizer's share of the model's FLOPs."""

from __future__ import annotations

from benchmarks.tokenizer import throughput

from tests.tokenizer.conftest import tiny_model_config


def test_throughput_records_rates_and_the_quantizers_share_of_the_flops():
    out = throughput(tiny_model_config(), batches=(2,), reps=1)
    for kind in ("train", "encode"):
        e = out[kind][2]
        assert e["windows_per_s"] > 0
        # the quantizer's FLOPs (distances to every code at least) are part of the total
        assert 0 < e["quantizer_flops_per_window"] < e["flops_per_window"]
    # training counts more than the nearest-code search of encoding: the library's one-hot
    # lookup and EMA sums, and the backward pass
    assert (
        out["train"][2]["quantizer_flops_per_window"]
        > out["encode"][2]["quantizer_flops_per_window"]
    )
    assert out["encode"][2]["windows_per_s_library_quantizer"] > 0
    assert out["peak_rss_mb"] > 0
