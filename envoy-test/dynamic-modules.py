#!/usr/bin/env python3
"""Turns an Envoy config that runs this project's filters as Wasm into one that runs them as dynamic modules.

    envoy-test/dynamic-modules.py IN.yaml OUT.yaml

Every `envoy.filters.http.wasm` filter whose code is a local `<filter>.wasm` becomes the dynamic-module filter
`lib<filter>.so` with the same plugin name (`filter_name`) and the same configuration JSON (`filter_config`), and
its metrics keep the Wasm build's `wasmcustom.` prefix, so stats tags and dashboards need no change. Envoy finds the
modules in $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (e.g. target/dynamic-module or dist/). Wasm-only options
(`vm_config`, `failure_policy`, `allow_on_headers_stop_iteration`, ...) have no counterpart and are dropped; the
`aws` filter reads AWS_* from Envoy's environment. `envoy-test/demo --dynamic-modules` runs the demo this way, and
a test holds this script to the conversion the integration tests make.

Needs PyYAML (installed with moto into .venv/ by envoy-test/install).
"""

import sys

import yaml

WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
MODULE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
STRING = "type.googleapis.com/google.protobuf.StringValue"


def module_of(typed_config):
    """The dynamic-module `typed_config` standing for a Wasm filter's, or None if it is not one of ours."""
    if not isinstance(typed_config, dict) or typed_config.get("@type") != WASM:
        return None
    plugin = typed_config.get("config", {})
    filename = plugin.get("vm_config", {}).get("code", {}).get("local", {}).get("filename")
    if not filename or not filename.endswith(".wasm"):
        return None
    module = filename.rsplit("/", 1)[-1][: -len(".wasm")]
    return {
        "@type": MODULE,
        "dynamic_module_config": {"name": module, "do_not_close": True, "metrics_namespace": "wasmcustom"},
        "filter_name": plugin.get("name", module),
        "filter_config": {"@type": STRING, "value": plugin.get("configuration", {}).get("value", "")},
    }


def convert(node):
    if isinstance(node, dict):
        for key, value in node.items():
            module = module_of(value) if key == "typed_config" else None
            node[key] = module if module is not None else convert(value)
    elif isinstance(node, list):
        return [convert(item) for item in node]
    return node


def literal_blocks(dumper, text):
    """Multi-line strings (the filters' JSON configurations) as YAML literal blocks, as a person writes them."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as source:
        config = yaml.safe_load(source)
    with open(sys.argv[2], "w") as out:
        out.write(f"# Made by envoy-test/dynamic-modules.py from {sys.argv[1]}.\n")
        yaml.add_representer(str, literal_blocks, Dumper=yaml.SafeDumper)
        yaml.safe_dump(convert(config), out, sort_keys=False, width=120)


if __name__ == "__main__":
    main()
