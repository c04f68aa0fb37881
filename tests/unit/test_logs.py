"""One JSON log shape: kopf's per-object records keep their object and lose kopf's own baggage."""

from __future__ import annotations

import json
import logging

from ucim.common.logs import JsonFormatter


def test_a_kopf_record_names_its_object_and_not_kopfs_settings() -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, "f.py", 1, "Handler 'report' succeeded.", None, None)
    ref = {"apiVersion": "ucim.io/v1alpha1", "kind": "UCloudJob", "name": "ucloud-1-abc", "namespace": "ucim"}
    record.__dict__.update(k8s_ref=ref, k8s_skip=False, settings=object(), ucloudjob="ucloud-1-abc")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["object"] == ref
    assert entry["ucloudjob"] == "ucloud-1-abc"  # our own extras stay
    assert not {"k8s_ref", "k8s_skip", "settings"} & set(entry)
    assert entry["severity"] == "info" and entry["message"] == "Handler 'report' succeeded."
