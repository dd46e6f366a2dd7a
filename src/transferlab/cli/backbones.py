"""`transferlab-backbones [PATTERN]`: the networks `backbone.name=` takes."""

import argparse
import fnmatch
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-backbones",
        description="List the backbones transferlab trains: every torchvision classifier "
        "(backbone=torchvision or a named group such as backbone=resnet18, then backbone.name=NAME) "
        "and, with timm installed, every timm model (backbone=timm backbone.name=NAME).",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext*'")
    parser.add_argument("--pretrained", action="store_true", help="timm: only models with pretrained weights")
    args = parser.parse_args(argv)

    from transferlab.errors import ConfigError
    from transferlab.models.backbones import import_timm, torchvision_models

    found = fnmatch.filter(torchvision_models(), args.pattern)
    print(f"torchvision ({len(found)}): {' '.join(found) or '-'}")
    try:
        timm = import_timm()
    except ConfigError as err:
        print(f"timm: not installed ({err})")
        return 0
    found = timm.list_models(args.pattern, pretrained=args.pretrained)
    print(f"timm ({len(found)}): {' '.join(found) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
