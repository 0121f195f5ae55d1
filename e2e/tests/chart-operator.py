#!/usr/bin/env python3
"""Reads `helm template charts/llamaduo` output on stdin and prints what the e2e operator test
needs from it, so the operator runs exactly as the chart deploys it:

  rbac     the ServiceAccount, (Cluster)Role and (Cluster)RoleBinding manifests (YAML stream)
  sa       the operator's ServiceAccount name
  command  the operator container's args, one per line
  env      the operator container's env as NAME=VALUE lines (valueFrom entries are printed as
           NAME=@fieldPath, for the test to resolve as the downward API would)
"""
import sys

import yaml

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def main():
    what = sys.argv[1]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    if what == "rbac":
        print(yaml.safe_dump_all([d for d in docs if d["kind"] in RBAC_KINDS]))
        return
    if what == "sa":
        print(next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"))
        return
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    ctr = deploy["spec"]["template"]["spec"]["containers"][0]
    if what == "command":
        for a in ctr.get("command", []) + ctr.get("args", []):
            print(a)
    elif what == "env":
        for e in ctr.get("env", []):
            if "value" in e:
                print(f"{e['name']}={e['value']}")
            elif "fieldRef" in e.get("valueFrom", {}):
                print(f"{e['name']}=@{e['valueFrom']['fieldRef']['fieldPath']}")
            else:
                sys.exit(f"env {e['name']}: only value and fieldRef are supported here")
    else:
        sys.exit(f"unknown query {what}")


if __name__ == "__main__":
    main()
