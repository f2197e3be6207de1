"""The chart's settings follow the key table (cloner/settings_keys.yaml, cloner/config.py).

``values.schema.json``'s ``config`` block is generated from the key table
(``python -m cloner.config --chart-schema charts/image-cloner/values.schema.json``),
and ``values.yaml``'s ``config`` block holds every key at the loader's
default, so the chart accepts exactly what the controller accepts at start-up.
"""

from __future__ import annotations

import json
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloner.config import KEYS, KEYS_BY_YAML, chart_schema, chart_set_properties

CHART = Path(__file__).resolve().parents[2] / "charts" / "image-cloner"


def schema_config() -> dict[str, Any]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    config: dict[str, Any] = schema["properties"]["config"]
    return config


def values_config() -> dict[str, Any]:
    """``values.yaml``'s ``config`` block, flattened to dotted keys."""
    raw = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key not in KEYS_BY_YAML:
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def test_the_schema_config_block_is_the_generated_one() -> None:
    config = schema_config()
    assert config == chart_schema(chart_set_properties(config)), (
        "charts/image-cloner/values.schema.json drifted from the key table: regenerate it with "
        "`python -m cloner.config --chart-schema charts/image-cloner/values.schema.json`"
    )


def test_every_key_is_a_value_or_set_by_the_chart() -> None:
    owned = chart_set_properties(schema_config())
    chart_set = {k for k, v in owned.items() if set(v) == {"description"}}
    assert set(values_config()) | chart_set == set(KEYS_BY_YAML)
    assert not set(values_config()) & chart_set


def test_a_key_the_chart_holds_tighter_accepts_nothing_the_controller_refuses() -> None:
    tighter = {k: v for k, v in chart_set_properties(schema_config()).items() if "$comment" in v}
    assert set(tighter) == {"metricsPort"}  # the chart's probes need the port
    for key, schema in tighter.items():
        loader = KEYS_BY_YAML[key]
        assert loader.low is None or schema["minimum"] >= loader.low, key
        assert loader.high is None or schema["maximum"] <= loader.high, key


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.yaml)
def test_each_value_is_the_loaders_default(key: Any) -> None:
    values = values_config()
    if key.yaml not in values or key.default is MISSING:
        return  # set by the chart (test above), or required (target)
    assert key.parse(values[key.yaml]) == key.parse(key.default), key.yaml


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    properties = schema_config()["properties"]
    # strict lower bounds stay strict, names keep their length limit
    assert properties["pollInterval"] == {"type": "number", "exclusiveMinimum": 0}
    assert properties["pullSecret"]["properties"]["name"]["maxLength"] == 253
    assert (
        properties["state"]["properties"]["configMap"]["maxLength"]
        == KEYS_BY_YAML["state.configMap"].max_length
    )
