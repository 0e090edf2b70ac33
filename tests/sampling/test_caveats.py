"""The misbehaving sampler x scheduler pairs: one list, served to API clients and the playground."""

from __future__ import annotations

from sd3pose.request import GenerationRequest
from sd3pose.sampling import SAMPLER_NAMES, SCHEDULER_NAMES
from sd3pose.sampling.caveats import CAVEATS, caveat, caveat_list, caveat_summary


def test_caveats_name_real_pairs_and_say_why() -> None:
    assert CAVEATS
    for (sampler, scheduler), why in CAVEATS.items():
        assert sampler in SAMPLER_NAMES and scheduler in SCHEDULER_NAMES
        assert len(why) > 40 and not why.endswith(".")  # a clause the playground completes


def test_caveat_lookup_accepts_the_api_spellings() -> None:
    assert caveat(" DPMPP_2M ", "Normal") == CAVEATS[("dpmpp_2m", "normal")]
    assert caveat("dpmpp_2m", "sgm_uniform") is None  # the API's default pair is fine
    assert caveat("euler_cfg_pp", "karras") is None


def test_the_api_schema_carries_the_list_and_a_summary() -> None:
    sampler = GenerationRequest.model_json_schema()["properties"]["sampler"]
    assert sampler["x-caveats"] == caveat_list()
    assert caveat_summary() in sampler["description"]
    assert "ddpm with any scheduler" in caveat_summary()
    assert "dpm_fast with sgm_uniform or simple" in caveat_summary()
