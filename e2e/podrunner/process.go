package main

// From a pod's container to a local process: argv, environment, working directory, and the
// host file standing in for the container's terminationMessagePath.

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// processSpec is what execute starts.
type processSpec struct {
	argv            []string
	env             []string
	dir             string
	terminationFile string
	// toContainer maps host paths in the termination message back to container paths.
	toContainer translator
}

func (r *runner) processSpec(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container, podDir string) (processSpec, error) {
	vols, err := volumeDirs(ctx, r.client, pod, podDir)
	if err != nil {
		return processSpec{}, err
	}
	var mounts []mount
	for _, vm := range ctr.VolumeMounts {
		dir, ok := vols[vm.Name]
		if !ok {
			return processSpec{}, fmt.Errorf("volumeMount %s names no volume of the pod", vm.Name)
		}
		if vm.SubPath != "" {
			dir = filepath.Join(dir, vm.SubPath)
		}
		mounts = append(mounts, mount{containerPath: vm.MountPath, hostPath: dir})
	}
	tmPath := ctr.TerminationMessagePath
	if tmPath == "" {
		tmPath = corev1.TerminationMessagePathDefault
	}
	termFile := filepath.Join(podDir, "termination-log")
	if err := os.WriteFile(termFile, nil, 0o666); err != nil {
		return processSpec{}, err
	}
	mounts = append(mounts, mount{containerPath: tmPath, hostPath: termFile})
	// The container's root filesystem: a directory of the pod (the working directory when the
	// container names none, and HOME).
	root := filepath.Join(podDir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return processSpec{}, err
	}
	tr := newTranslator(mounts)

	resolved, err := resolveEnv(ctx, r.client, pod, ctr)
	if err != nil {
		return processSpec{}, err
	}
	values := map[string]string{}
	env := []string{"HOME=" + root, "TMPDIR=" + root}
	for _, name := range r.o.passEnv {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	if v, ok := os.LookupEnv("PATH"); ok {
		env = append(env, "PATH="+v)
	}
	env = append(env, r.o.env...)
	hasResult := false
	for _, e := range resolved {
		values[e.name] = e.value
		env = append(env, e.name+"="+tr.rewrite(e.value))
		hasResult = hasResult || e.name == r.o.resultEnv
	}
	if r.o.resultEnv != "" && !hasResult {
		env = append(env, r.o.resultEnv+"="+termFile)
	}

	var argv []string
	for _, a := range ctr.Command {
		argv = append(argv, tr.rewrite(expandVars(a, values)))
	}
	var key string
	if len(argv) == 0 {
		key = ctr.Image
		if _, ok := r.o.exec[key]; !ok {
			key = imageRepo(ctr.Image)
		}
		argv = []string{key}
	} else if _, ok := r.o.exec[argv[0]]; ok {
		key = argv[0]
	} else {
		key = path.Base(argv[0])
	}
	bin, ok := r.o.exec[key]
	if !ok {
		return processSpec{}, fmt.Errorf("no --exec mapping for %q (command %q, image %q)", key, ctr.Command, ctr.Image)
	}
	argv[0] = bin
	for _, a := range ctr.Args {
		argv = append(argv, tr.rewrite(expandVars(a, values)))
	}
	dir := root
	if ctr.WorkingDir != "" {
		dir = tr.rewrite(ctr.WorkingDir)
		if !filepath.IsAbs(dir) || dir == ctr.WorkingDir {
			return processSpec{}, fmt.Errorf("workingDir %s is not under a mounted volume", ctr.WorkingDir)
		}
	}
	// Only the volume mounts map back: the termination file itself is not named in messages.
	back := newTranslator(mounts[:len(mounts)-1]).inverse()
	return processSpec{argv: argv, env: env, dir: dir, terminationFile: termFile, toContainer: back}, nil
}

// imageRepo strips the tag or digest of an image reference.
func imageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// maxMessage is what the kubelet keeps of a termination message.
const maxMessage = 4096

// terminationMessage is the container's termination message as the kubelet builds it: the
// file at terminationMessagePath (at most 4096 bytes); with FallbackToLogsOnError, a failed
// container that wrote none gets the tail of its log (at most 80 lines, 2048 bytes).
func terminationMessage(file, logFile string, policy corev1.TerminationMessagePolicy, exitCode int32) string {
	b, err := os.ReadFile(file)
	if err == nil && len(b) > 0 {
		if len(b) > maxMessage {
			b = b[:maxMessage]
		}
		return string(b)
	}
	if policy != corev1.TerminationMessageFallbackToLogsOnError || exitCode == 0 {
		return ""
	}
	l, err := os.ReadFile(logFile)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(l), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	tail := strings.Join(lines, "\n")
	if len(tail) > 2048 {
		tail = tail[len(tail)-2048:]
	}
	return tail
}
