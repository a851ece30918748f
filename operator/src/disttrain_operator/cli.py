"""`disttrain operator | crd | run`: the operator, the generated CRD, and local mode."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disttrain", description="Distributed TensorFlow training jobs (DistTrainJob) on Kubernetes or locally."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable)",
    )
    operator.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (default %(default)s; 'none' disables it)",
    )
    operator.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="serve Prometheus metrics on this port at /metrics (default %(default)s; 0 disables them)",
    )

    operator.add_argument(
        "--allow-host-access",
        action="store_true",
        help="let job templates use privileged containers, added capabilities, host namespaces, hostPath, hostPort "
        "and nodeName (refused by default; docs/security.md)",
    )
    operator.add_argument(
        "--allowed-service-account",
        action="append",
        dest="service_accounts",
        metavar="NAME",
        help="a serviceAccountName job templates may use (repeatable; default: only 'default'; '*': any)",
    )

    operator.add_argument(
        "--no-network-policy",
        action="store_true",
        help="by default, create no NetworkPolicy per job (a job's spec.networkPolicy still decides for it)",
    )

    operator.add_argument("--verbose", "-v", action="store_true", help="debug logs, with tracebacks of failed passes")
    operator.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding the coordination.k8s.io Lease 'disttrain-operator' (several replicas: one acts)",
    )
    operator.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "default",
        help="the Lease's namespace (default $POD_NAMESPACE, else default)",
    )

    commands.add_parser("crd", help="print the generated CustomResourceDefinition YAML")
    policy = commands.add_parser(
        "template-policy", help="print the ValidatingAdmissionPolicies that refuse host access in templates"
    )
    policy.add_argument(
        "--validations",
        choices=("host-access", "service-accounts"),
        help="print only this policy's validations (the Helm chart's files/<name>.yaml)",
    )
    commands.add_parser("api-docs", help="print the Markdown API reference generated from the models")

    run = commands.add_parser("run", help="run a DistTrainJob manifest as local processes")
    run.add_argument("manifest", type=Path, help="the DistTrainJob YAML, as you would kubectl apply it")
    run.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the replicas write logs, checkpoints, the model and metrics (default runs/<job name>)",
    )
    run.add_argument("--trainer", default=None, help="trainer command (default: disttrain-trainer beside this program)")
    run.add_argument("--quiet", "-q", action="store_true", help="show only the chief's progress and the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `disttrain` console script."""
    args = _parser().parse_args(argv)
    if args.command == "crd":
        from .crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    if args.command == "template-policy":
        from .crd import policy_validations_yaml, template_policy_yaml

        sys.stdout.write(policy_validations_yaml(args.validations) if args.validations else template_policy_yaml())
        return 0
    if args.command == "api-docs":
        from .apidoc import api_reference

        sys.stdout.write(api_reference())
        return 0
    if args.command == "run":
        from .local import run_manifest

        return run_manifest(args.manifest, output_dir=args.output_dir, trainer=args.trainer, quiet=args.quiet)
    from .handlers import run_operator
    from .policy import DEFAULT_SERVICE_ACCOUNTS, TemplatePolicy

    liveness = None if args.liveness == "none" else args.liveness
    policy = TemplatePolicy(args.allow_host_access, tuple(args.service_accounts or DEFAULT_SERVICE_ACCOUNTS))
    return run_operator(
        namespaces=args.namespaces,
        liveness=liveness,
        metrics_port=args.metrics_port or None,
        policy=policy,
        network_policy=not args.no_network_policy,
        verbose=args.verbose,
        leader_namespace=args.leader_election_namespace if args.leader_elect else None,
    )


if __name__ == "__main__":
    sys.exit(main())
