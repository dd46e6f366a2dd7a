"""`transferlab-backbones [PATTERN]`: the networks `backbone.name=` (and `backbone.encoder=`) takes."""

import argparse
import fnmatch
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-backbones",
        description="List the backbones transferlab trains: every torchvision classifier "
        "(backbone=torchvision or a named group such as backbone=resnet18, then backbone.name=NAME), "
        "with timm installed every timm model (backbone=timm backbone.name=NAME), torchvision's "
        "segmentation models (task=segmentation backbone=tv_segmentation backbone.name=NAME) and "
        "U-Net encoders (task=segmentation backbone=unet backbone.encoder=NAME).",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext*'")
    parser.add_argument("--pretrained", action="store_true", help="timm: only models with pretrained weights")
    parser.add_argument("--unet", action="store_true",
                        help="check which torchvision classifiers matching PATTERN have a feature "
                        "pyramid for a U-Net encoder (on the meta device: about 0.2 s each)")
    args = parser.parse_args(argv)

    from transferlab.errors import ConfigError
    from transferlab.models.backbones import (
        import_timm,
        segmentation_models,
        torchvision_models,
    )

    found = fnmatch.filter(torchvision_models(), args.pattern)
    print(f"torchvision ({len(found)}): {' '.join(found) or '-'}")
    try:
        timm = import_timm()
    except ConfigError as err:
        print(f"timm: not installed ({err})")
        timm = None
    if timm is not None:
        listed = timm.list_models(args.pattern, pretrained=args.pretrained)
        print(f"timm ({len(listed)}): {' '.join(listed) or '-'}")
    segmentation = fnmatch.filter(segmentation_models(), args.pattern)
    print(f"torchvision segmentation, backbone=tv_segmentation ({len(segmentation)}): "
          f"{' '.join(segmentation) or '-'}")
    if args.unet:
        unet_encoders(found)
    else:
        print("U-Net encoders, backbone=unet backbone.encoder=: torchvision classifiers with a "
              "feature pyramid (--unet checks which), timm models as timm:<name>")
    return 0


def unet_encoders(names: list[str]) -> None:
    from transferlab.models.backbones.encoders import pyramid_problem

    problems = {name: pyramid_problem(name) for name in names}
    usable = [name for name, problem in problems.items() if problem is None]
    print(f"U-Net encoders, backbone=unet backbone.encoder= ({len(usable)}): {' '.join(usable) or '-'}")
    for name, problem in problems.items():
        if problem is not None:
            print(f"  not {name}: {problem.split(';')[0]}")


if __name__ == "__main__":
    sys.exit(main())
