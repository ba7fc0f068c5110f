"""What `kubectl kustomize FOLDER` renders, in Python, for machines without kubectl (or with one too old for
components: Debian's kubernetes-client embeds kustomize 2).

Only the fields deploy/kubernetes uses, with kustomize's semantics: resources (files and folders), components,
namespace, labels, images, and patches (strategic merge, `$patch: delete` included). Any other field is an error
rather than a silent difference; tests/deploy/test_kubernetes.py compares the result with kubectl's where kubectl
is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "labels", "resources", "components", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}


class KustomizeError(Exception):
    """A kustomization this renderer does not understand, or one kustomize itself would refuse."""


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def build(folder: Path, *, kind: str = "Kustomization", seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects the kustomization in ``folder`` renders (the order of its resources, not kubectl's)."""
    folder = folder.resolve()
    if folder in seen:
        raise KustomizeError(f"cycle detected: {folder} includes itself")
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    if spec.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{folder}: expected a {kind}, found a {spec.get('kind')}")
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{folder}: fields this renderer does not handle: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            if path in (*seen, folder) or folder.is_relative_to(path):
                raise KustomizeError(f"cycle detected: {folder} includes {path}, which contains it")
            objects += build(path, seen=(*seen, folder))
        else:
            objects += load(path)
    for entry in spec.get("components", []):
        objects = apply_component((folder / entry).resolve(), objects, (*seen, folder))
    return transform(spec, objects, folder)


def apply_component(folder: Path, objects: list[dict[str, Any]], seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    if spec.get("kind") != "Component":
        raise KustomizeError(f"{folder}: a component must be kind: Component")
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{folder}: fields this renderer does not handle: {sorted(unknown)}")
    added: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        added += load(folder / entry)
    return transform(spec, objects + added, folder)


def transform(spec: dict[str, Any], objects: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """A kustomization's transformers, in kustomize's order: patches, namespace, labels, images."""
    objects = copy.deepcopy(objects)
    for patch in spec.get("patches", []):
        objects = apply_patch(patch, objects, folder)
    namespace = spec.get("namespace")
    if namespace:
        for doc in objects:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for entry in spec.get("labels", []):
        if set(entry) - {"pairs"}:
            raise KustomizeError(f"{folder}: labels: only `pairs` is handled")
        for doc in objects:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in spec.get("images", []):
        for doc in objects:
            for container in containers(doc):
                container["image"] = retag(container["image"], image)
    names = [identity(doc) for doc in objects]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise KustomizeError(f"{folder}: may not add resource with an already registered id: {sorted(duplicates)}")
    return objects


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    for step in ("jobTemplate", "spec", "template", "spec"):
        if step in spec and isinstance(spec[step], dict):
            spec = spec[step]
    return spec.get("initContainers", []) + spec.get("containers", [])


def retag(reference: str, image: dict[str, str]) -> str:
    """kustomize's images transformer on one container's image reference."""
    name, tag = reference, ""
    if "@" in name:
        name, tag = name.split("@", 1)
        tag = "@" + tag
    elif ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
        tag = ":" + tag
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        tag = "@" + image["digest"]
    elif "newTag" in image:
        tag = ":" + str(image["newTag"])
    return name + tag


def apply_patch(patch: dict[str, Any], objects: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    if set(patch) - {"patch", "path"}:
        raise KustomizeError(f"{folder}: patches: only `patch` and `path` (no target) are handled")
    body = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    (change,) = [doc for doc in yaml.safe_load_all(body) if doc]
    if "op" in change or isinstance(change, list):
        raise KustomizeError(f"{folder}: JSON 6902 patches are not handled")
    key = (change["kind"], change["metadata"]["name"])
    matches = [doc for doc in objects if (doc["kind"], doc["metadata"]["name"]) == key]
    if len(matches) != 1:
        raise KustomizeError(f"{folder}: the patch of {key} matches {len(matches)} objects")
    (target,) = matches
    if change.get("$patch") == "delete":
        return [doc for doc in objects if doc is not target]
    merge(target, {k: v for k, v in change.items() if k not in ("apiVersion", "kind")})
    return objects


def merge(into: dict[str, Any], change: dict[str, Any]) -> None:
    """Strategic merge: maps merge, lists of named maps merge by name, other values replace."""
    for key, value in change.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value + into.get(key, [])):
            byname = {item["name"]: item for item in into.get(key, [])}
            for item in value:
                if item["name"] in byname:
                    merge(byname[item["name"]], item)
                else:
                    into.setdefault(key, []).append(item)
        else:
            into[key] = value
