package main

// The watch loop: one goroutine per pod that kwok has marked Running, which runs the pod's
// container as a local process and reports its end in the pod status.

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// runner tracks the pods it has started.
type runner struct {
	client kubernetes.Interface
	o      options
	mu     sync.Mutex
	pods   map[types.UID]context.CancelFunc // pods whose process was started (cancel kills it)
	wg     sync.WaitGroup
}

func newRunner(c kubernetes.Interface, o options) *runner {
	return &runner{client: c, o: o, pods: map[types.UID]context.CancelFunc{}}
}

// run watches until ctx ends, then kills the processes still running.
func (r *runner) run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(r.client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", r.o.node).String()
			lo.LabelSelector = r.o.selector
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { r.observe(ctx, obj) },
		UpdateFunc: func(_, obj any) { r.observe(ctx, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				r.kill(p, "deleted")
			}
		},
	})
	if err != nil {
		return fmt.Errorf("adding the pod handler: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("the pod cache did not sync")
	}
	log.Printf("watching pods on node %s matching %q", r.o.node, r.o.selector)
	if r.o.readyFile != "" {
		if err := os.WriteFile(r.o.readyFile, []byte("ready\n"), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", r.o.readyFile, err)
		}
	}
	<-ctx.Done()
	log.Printf("stopping: killing the processes still running")
	r.mu.Lock()
	for _, cancel := range r.pods {
		if cancel != nil { // nil: that pod's process already ended
			cancel()
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// observe starts a pod's process when kwok has made the pod Running, and kills it when the pod
// is being deleted.
func (r *runner) observe(ctx context.Context, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.DeletionTimestamp != nil {
		r.kill(pod, "being deleted")
		return
	}
	if pod.Status.Phase != corev1.PodRunning || !containerRunning(pod) {
		return
	}
	r.mu.Lock()
	if _, started := r.pods[pod.UID]; started {
		r.mu.Unlock()
		return
	}
	pctx, cancel := context.WithCancel(ctx)
	r.pods[pod.UID] = cancel
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		r.runPod(pctx, pod.DeepCopy())
		cancel()
		r.mu.Lock()
		r.pods[pod.UID] = nil // done: never started again, nothing left to stop
		r.mu.Unlock()
	}()
}

// containerRunning: kwok's pod-ready stage has set the first container's state to running
// (and no one has terminated it yet).
func containerRunning(pod *corev1.Pod) bool {
	return len(pod.Status.ContainerStatuses) > 0 && pod.Status.ContainerStatuses[0].State.Running != nil
}

func (r *runner) kill(pod *corev1.Pod, why string) {
	r.mu.Lock()
	cancel, ok := r.pods[pod.UID]
	r.mu.Unlock()
	if ok {
		if cancel != nil {
			log.Printf("%s/%s %s: stopping its process", pod.Namespace, pod.Name, why)
			cancel()
		}
		r.mu.Lock()
		r.pods[pod.UID] = nil // started and stopped: never start again
		r.mu.Unlock()
	}
}

// outcome is how a container ended.
type outcome struct {
	exitCode int32
	reason   string
	message  string
	started  time.Time
	finished time.Time
}

// runPod runs the pod's container and reports the outcome, unless the pod went away.
func (r *runner) runPod(ctx context.Context, pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	podDir := filepath.Join(r.o.workDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)[:8])
	started := time.Now()
	out, err := r.execute(ctx, pod, podDir)
	if ctx.Err() != nil {
		log.Printf("%s: stopped (%v); no status reported", key, ctx.Err())
		return
	}
	if err != nil {
		// What a kubelet reports when it cannot create the container (e.g. a missing Secret).
		log.Printf("%s: cannot run: %v", key, err)
		out = outcome{exitCode: 128, reason: "ContainerCannotRun", message: err.Error(), started: started, finished: time.Now()}
	}
	log.Printf("%s: exited %d (%s) after %.1fs", key, out.exitCode, out.reason, out.finished.Sub(out.started).Seconds())
	if !r.hold(ctx, pod) {
		log.Printf("%s: stopped while held; no status reported", key)
		return
	}
	if err := reportTerminated(context.Background(), r.client, pod, out); err != nil {
		log.Printf("%s: reporting the status: %v", key, err)
	}
}

// hold waits while the pod's hold file exists (see --hold-dir); false when ctx ended first.
func (r *runner) hold(ctx context.Context, pod *corev1.Pod) bool {
	if r.o.holdDir == "" {
		return true
	}
	job := pod.Labels["batch.kubernetes.io/job-name"]
	if job == "" {
		return true
	}
	file := filepath.Join(r.o.holdDir, pod.Namespace+"_"+job)
	logged := false
	for {
		if _, err := os.Stat(file); err != nil {
			return true
		}
		if !logged {
			log.Printf("%s/%s: holding its status while %s exists", pod.Namespace, pod.Name, file)
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// execute prepares the container's files and runs its process to the end.
func (r *runner) execute(ctx context.Context, pod *corev1.Pod, podDir string) (outcome, error) {
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		return outcome{}, fmt.Errorf("the e2e runtime runs pods with exactly one container and no init containers")
	}
	// Never: a stage pod. Always: a Deployment's pod (the serving Deployment), whose process runs
	// until the pod is deleted; should it exit, its end is reported as for Never (phase Failed),
	// so the ReplicaSet replaces the pod instead of a kubelet restarting the container in place.
	if p := pod.Spec.RestartPolicy; p != corev1.RestartPolicyNever && p != corev1.RestartPolicyAlways {
		return outcome{}, fmt.Errorf("restartPolicy %s: the e2e runtime supports Never and Always only", p)
	}
	ctr := &pod.Spec.Containers[0]
	if err := os.MkdirAll(podDir, 0o755); err != nil {
		return outcome{}, err
	}
	spec, err := r.processSpec(ctx, pod, ctr, podDir)
	if err != nil {
		return outcome{}, err
	}
	logf, err := os.Create(filepath.Join(podDir, "container.log"))
	if err != nil {
		return outcome{}, err
	}
	defer logf.Close()
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	o := outcome{started: time.Now()}
	if err := cmd.Start(); err != nil {
		return outcome{}, fmt.Errorf("starting %s: %w", spec.argv[0], err)
	}
	log.Printf("%s/%s: started pid %d: %v (log %s)", pod.Namespace, pod.Name, cmd.Process.Pid, spec.argv, logf.Name())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		grace := r.o.maxGrace
		if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
			grace = time.Duration(*g) * time.Second
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case waitErr = <-done:
		case <-time.After(grace):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			waitErr = <-done
		}
	}
	o.finished = time.Now()
	o.exitCode = 0
	if waitErr != nil {
		ee, ok := waitErr.(*exec.ExitError)
		if !ok {
			return outcome{}, waitErr
		}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			o.exitCode = 128 + int32(ws.Signal())
		} else {
			o.exitCode = int32(ee.ExitCode())
		}
	}
	o.reason = "Completed"
	if o.exitCode != 0 {
		o.reason = "Error"
	}
	o.message = spec.toContainer.rewrite(
		terminationMessage(spec.terminationFile, logf.Name(), ctr.TerminationMessagePolicy, o.exitCode))
	return o, nil
}
