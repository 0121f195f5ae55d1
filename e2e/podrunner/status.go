package main

// Reporting a container's end in the pod status, as the kubelet does for restartPolicy Never:
// the container terminated (exit code, reason, termination message), the pod Succeeded when it
// exited 0 and Failed otherwise, Ready and ContainersReady False with reason PodCompleted. A pod
// with restartPolicy Always (a Deployment's) gets the same: there is no in-place restart.

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// terminatedPatch is the strategic-merge patch of the pod's status subresource.
func terminatedPatch(pod *corev1.Pod, o outcome) ([]byte, error) {
	phase := corev1.PodSucceeded
	if o.exitCode != 0 {
		phase = corev1.PodFailed
	}
	now := metav1.NewTime(o.finished)
	ctr := pod.Spec.Containers[0]
	status := map[string]any{
		"phase": phase,
		"conditions": []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now},
		},
		"containerStatuses": []corev1.ContainerStatus{{
			Name:         ctr.Name,
			Image:        ctr.Image,
			ImageID:      ctr.Image,
			ContainerID:  fmt.Sprintf("podrunner://%s", pod.UID),
			Ready:        false,
			Started:      new(false),
			RestartCount: 0,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode:    o.exitCode,
				Reason:      o.reason,
				Message:     o.message,
				StartedAt:   metav1.NewTime(o.started),
				FinishedAt:  now,
				ContainerID: fmt.Sprintf("podrunner://%s", pod.UID),
			}},
		}},
	}
	return json.Marshal(map[string]any{"status": status})
}

func reportTerminated(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, o outcome) error {
	patch, err := terminatedPatch(pod, o)
	if err != nil {
		return err
	}
	_, err = c.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: "llamaduo-e2e-podrunner"}, "status")
	return err
}
