package main

// Volumes, mapped to local directories as a one-node cluster's kubelet would: a
// PersistentVolumeClaim is the directory of its bound PersistentVolume (hostPath or local),
// ConfigMap and Secret volumes are files written from the API, emptyDir is a fresh directory
// of the pod. Anything else fails the pod with a message naming the volume.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumeDirs maps each of the pod's volumes to a host directory (or file source).
func volumeDirs(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, podDir string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir, err := volumeDir(ctx, c, pod, v, filepath.Join(podDir, "volumes", v.Name))
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		out[v.Name] = dir
	}
	return out, nil
}

func volumeDir(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, v corev1.Volume, local string) (string, error) {
	ns := pod.Namespace
	switch {
	case v.PersistentVolumeClaim != nil:
		pvc, err := c.CoreV1().PersistentVolumeClaims(ns).Get(ctx, v.PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
			return "", fmt.Errorf("claim %s is %s, not Bound", pvc.Name, pvc.Status.Phase)
		}
		pv, err := c.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		switch {
		case pv.Spec.HostPath != nil:
			return pv.Spec.HostPath.Path, os.MkdirAll(pv.Spec.HostPath.Path, 0o755)
		case pv.Spec.Local != nil:
			return pv.Spec.Local.Path, nil
		}
		return "", fmt.Errorf("PersistentVolume %s has neither hostPath nor local: the e2e runtime cannot mount it", pv.Name)
	case v.EmptyDir != nil:
		return local, os.MkdirAll(local, 0o755)
	case v.ConfigMap != nil:
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil {
			if v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
				return local, os.MkdirAll(local, 0o755)
			}
			return "", err
		}
		data := map[string][]byte{}
		for k, s := range cm.Data {
			data[k] = []byte(s)
		}
		for k, b := range cm.BinaryData {
			data[k] = b
		}
		return local, writeKeys(local, data, v.ConfigMap.Items, 0o644)
	case v.Secret != nil:
		s, err := c.CoreV1().Secrets(ns).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
		if err != nil {
			if v.Secret.Optional != nil && *v.Secret.Optional {
				return local, os.MkdirAll(local, 0o700)
			}
			return "", err
		}
		return local, writeKeys(local, s.Data, v.Secret.Items, 0o600)
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken != nil {
				return "", fmt.Errorf("projected serviceAccountToken: the e2e runtime issues no tokens " +
					"(llamaduo's stage pods must set automountServiceAccountToken: false)")
			}
		}
		return "", fmt.Errorf("projected volumes are not supported by the e2e runtime")
	}
	return "", fmt.Errorf("volume type not supported by the e2e runtime (PVC, emptyDir, configMap, secret only)")
}

// writeKeys writes a ConfigMap's or Secret's keys (all, or the listed items) as files.
func writeKeys(dir string, data map[string][]byte, items []corev1.KeyToPath, mode os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	write := func(rel string, b []byte, m *int32) error {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		fm := mode
		if m != nil {
			fm = os.FileMode(*m)
		}
		return os.WriteFile(p, b, fm)
	}
	if len(items) == 0 {
		for k, b := range data {
			if err := write(k, b, nil); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("no key %q", it.Key)
		}
		if err := write(it.Path, b, it.Mode); err != nil {
			return err
		}
	}
	return nil
}
