// Command podrunner plays the container runtime of the e2e cluster's kwok node for the pods
// under test (llamaduo's stage pods and the serving Deployment's pods): kwok makes the node and its pods look alive, but runs
// nothing. podrunner watches the pods bound to that node that match a label selector, and for
// each pod that kwok has marked Running it does what a kubelet and a container runtime would:
//
//   - resolves the container's environment (value, secretKeyRef, configMapKeyRef, fieldRef,
//     envFrom) from the API, with $(VAR) expansion;
//   - maps the pod's volumes to local directories: a PersistentVolumeClaim to its bound
//     PersistentVolume's hostPath/local path (as on a one-node cluster), ConfigMap and Secret
//     volumes to files written from the API, emptyDir to a fresh directory;
//   - runs the container's command as a local process (the command's name is mapped to a local
//     binary with --exec), with container paths in env, command and args rewritten to the mapped
//     directories (there is no mount namespace: see translate.go);
//   - hands the outcome back through the pod status, as the kubelet does: phase Succeeded or
//     Failed, and containerStatuses[0].state.terminated {exitCode, reason, message}, where the
//     message is the file the process wrote at the container's terminationMessagePath;
//   - kills the process when the pod is deleted (e.g. garbage-collected with its Job); a
//     long-running process (a server, restartPolicy Always) runs until then. There is no network
//     namespace either: a server listens on the host (tests/stage.sh moves it to a free port).
//
// kwok's own pod-complete stage must not complete these pods first: up.sh excludes pods with
// E2E_KWOK_RUNTIME_LABEL from it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// options are the command-line settings.
type options struct {
	kubeconfig string
	node       string
	selector   string
	workDir    string
	readyFile  string
	resultEnv  string
	exec       map[string]string
	env        []string
	passEnv    []string
	maxGrace   time.Duration
	holdDir    string
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("podrunner", flag.ContinueOnError)
	var o options
	var execs, envs, pass multiFlag
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig (default $KUBECONFIG)")
	fs.StringVar(&o.node, "node", "", "name of the kwok node whose pods to run (required)")
	fs.StringVar(&o.selector, "selector", "app.kubernetes.io/managed-by=llamaduo-operator", "label selector of the pods to run")
	fs.StringVar(&o.workDir, "work-dir", "", "directory for per-pod files and logs (required)")
	fs.StringVar(&o.readyFile, "ready-file", "", "file written once the pod cache is synced")
	fs.StringVar(&o.resultEnv, "result-env", "LLAMADUO_RESULT_PATH",
		"env var set to the local termination-message file when the pod does not set it (empty: none)")
	fs.Var(&execs, "exec", "NAME=PATH: run PATH for a container whose command (or, without a command, image) is NAME; repeatable")
	fs.Var(&envs, "env", "K=V added to every process's environment before the pod's own; repeatable")
	fs.Var(&pass, "pass-env", "host environment variable passed to every process; repeatable")
	fs.DurationVar(&o.maxGrace, "max-grace", 10*time.Second, "longest wait between SIGTERM and SIGKILL of a deleted pod's process")
	fs.StringVar(&o.holdDir, "hold-dir", "", "while a file <namespace>_<job-name> exists here, a finished pod of that Job "+
		"keeps looking Running (its end is reported when the file is removed): lets a test act at a chosen moment")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.node == "" || o.workDir == "" {
		return o, fmt.Errorf("--node and --work-dir are required")
	}
	o.exec = map[string]string{}
	for _, e := range execs {
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" || v == "" {
			return o, fmt.Errorf("--exec %q: want NAME=PATH", e)
		}
		o.exec[k] = v
	}
	for _, e := range envs {
		if !strings.Contains(e, "=") {
			return o, fmt.Errorf("--env %q: want K=V", e)
		}
	}
	o.env = envs
	o.passEnv = pass
	return o, nil
}

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("[podrunner] ")
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		log.Fatalf("bad arguments: %v", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		log.Fatalf("loading kubeconfig %s: %v", o.kubeconfig, err)
	}
	cfg.UserAgent = "llamaduo-e2e-podrunner"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("building the client: %v", err)
	}
	if err := os.MkdirAll(o.workDir, 0o755); err != nil {
		log.Fatalf("creating %s: %v", o.workDir, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	r := newRunner(client, o)
	if err := r.run(ctx); err != nil {
		log.Fatalf("%v", err)
	}
}
