"""The model store verbs: ``models list|show|install|verify|remove``."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_FAILED, EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("models", help="the model store: list, show, install, verify, remove models by name")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="one model a line: name, where it lives, model id, sha256, intended use")
    q = actions.add_parser("show", help="a model's card: training data and metrics, intended use, input statistics")
    q.add_argument("name", help="a store name, or a model card (or its folder), such as a training run's")
    q = actions.add_parser("install", help="copy a model card and its weights into your store, checking the sha256")
    q.add_argument("source", type=Path, help="a model card JSON, or the folder that holds one")
    q.add_argument("--name", help="store name (default: the card's model id)")
    actions.add_parser("verify", help="re-check every stored model's weights against its card")
    q = actions.add_parser("remove", help="remove a model from your store")
    q.add_argument("name")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from ..engine import store

    if args.action == "list":
        for model in store.list_models():
            print(f"{model.name}\t{model.place}\t{model.card.model_id}\t{model.card.sha256[:12]}\t{model.card.intended_use}")
        return EXIT_OK
    if args.action == "show":
        print(store.describe(store.find_or_read(args.name)))
        return EXIT_OK
    if args.action == "install":
        model = store.install(args.source, args.name)
        print(f"installed {model.name} ({model.card.model_id}, sha256 {model.card.sha256[:12]}) into {model.card_path.parent}")
        return EXIT_OK
    if args.action == "remove":
        print(f"removed {args.name} ({store.remove(args.name)})")
        return EXIT_OK
    broken = 0
    for model in store.list_models():
        problem = store.verify_model(model)
        broken += problem is not None
        print(f"{model.name}\t{model.place}\t{'ok' if problem is None else 'BROKEN: ' + problem}")
    if broken:
        print(f"{broken} model(s) failed verification", file=sys.stderr)
    return EXIT_FAILED if broken else EXIT_OK
