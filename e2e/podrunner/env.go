package main

// The container environment, resolved as the kubelet does: envFrom first, then env in order
// (a later entry wins), each value with $(VAR) references to earlier variables expanded.

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// envVar is one resolved variable, in definition order.
type envVar struct{ name, value string }

// resolveEnv returns the container's environment; a missing Secret, ConfigMap or key that is
// not optional is an error (the kubelet would fail the container with CreateContainerConfigError).
func resolveEnv(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, ctr *corev1.Container) ([]envVar, error) {
	ns := pod.Namespace
	var out []envVar
	values := map[string]string{}
	set := func(k, v string) {
		if _, seen := values[k]; !seen {
			out = append(out, envVar{name: k})
		}
		values[k] = v
	}
	for _, src := range ctr.EnvFrom {
		var data map[string]string
		optional := false
		switch {
		case src.SecretRef != nil:
			optional = src.SecretRef.Optional != nil && *src.SecretRef.Optional
			s, err := c.CoreV1().Secrets(ns).Get(ctx, src.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", src.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		case src.ConfigMapRef != nil:
			optional = src.ConfigMapRef.Optional != nil && *src.ConfigMapRef.Optional
			cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, src.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %s: %w", src.ConfigMapRef.Name, err)
			}
			data = cm.Data
		default:
			return nil, fmt.Errorf("envFrom entry with neither secretRef nor configMapRef")
		}
		for k, v := range data {
			set(src.Prefix+k, v)
		}
	}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, values))
			continue
		}
		v, ok, err := resolveValueFrom(ctx, c, pod, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	for i := range out {
		out[i].value = values[out[i].name]
	}
	return out, nil
}

// resolveValueFrom reads one valueFrom; ok is false for a missing optional key.
func resolveValueFrom(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, src *corev1.EnvVarSource) (string, bool, error) {
	ns := pod.Namespace
	switch {
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		optional := r.Optional != nil && *r.Optional
		s, err := c.CoreV1().Secrets(ns).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secretKeyRef %s/%s: %w", r.Name, r.Key, err)
		}
		v, found := s.Data[r.Key]
		if !found {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secretKeyRef %s: no key %q", r.Name, r.Key)
		}
		return string(v), true, nil
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		optional := r.Optional != nil && *r.Optional
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMapKeyRef %s/%s: %w", r.Name, r.Key, err)
		}
		v, found := cm.Data[r.Key]
		if !found {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMapKeyRef %s: no key %q", r.Name, r.Key)
		}
		return v, true, nil
	case src.FieldRef != nil:
		v, err := fieldValue(pod, src.FieldRef.FieldPath)
		return v, err == nil, err
	default:
		return "", false, fmt.Errorf("unsupported valueFrom (only secretKeyRef, configMapKeyRef, fieldRef)")
	}
}

// fieldValue resolves the downward-API fields a stage pod may ask for.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported by the e2e runtime", path)
}

// expandVars expands $(NAME) references to defined variables, as the kubelet does: $$ escapes
// a $, and a reference to an undefined variable is left as written.
func expandVars(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
