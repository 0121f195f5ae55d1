package main

// Path translation. The pods' processes run on the host without a mount namespace, so a
// container path such as /artifacts (a PVC mount) does not exist for them. podrunner maps each
// mount to a local directory and rewrites every occurrence of a mounted container path in the
// process's environment, command, args and working directory. An occurrence counts only as a
// whole path: at the start of a string or after a delimiter (quote, '=', ':', ',', space, or
// the "file://" of a URL), and followed by the end, '/', or a character that cannot be part of
// a file name component in practice (quote, space, ',', ';', ')'...). So
// `file:///artifacts/ns/m` and `{"path":"/artifacts"}` are rewritten, `/artifacts2` and
// `/data/artifacts` are not.

import (
	"sort"
	"strings"
)

// mount maps a container path to a host path.
type mount struct {
	containerPath string
	hostPath      string
}

// translator rewrites container paths to host paths.
type translator struct {
	mounts []mount // longest container path first, so nested mounts win
}

func newTranslator(mounts []mount) translator {
	ms := make([]mount, 0, len(mounts))
	for _, m := range mounts {
		p := strings.TrimRight(m.containerPath, "/")
		if p == "" || !strings.HasPrefix(p, "/") {
			continue // "/" itself or a relative path cannot be rewritten safely
		}
		ms = append(ms, mount{containerPath: p, hostPath: strings.TrimRight(m.hostPath, "/")})
	}
	sort.SliceStable(ms, func(i, j int) bool { return len(ms[i].containerPath) > len(ms[j].containerPath) })
	return translator{mounts: ms}
}

// isNameChar reports whether c can continue a path component (so a match before it is only a
// prefix of a longer name).
func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == '+' || c == '@' || c == '~'
}

// startsPath reports whether position i of s may begin an absolute path.
func startsPath(s string, i int) bool {
	if i == 0 {
		return true
	}
	if strings.HasSuffix(s[:i], "file://") {
		return true
	}
	switch s[i-1] {
	case '"', '\'', '=', ':', ',', ' ', '\t', '\n', '(', '[', '{':
		return true
	}
	return false
}

// inverse maps host paths back to container paths: the termination message a process writes
// names host paths (it was given them), but the pod's status must read as the container saw
// it (e.g. a model URI under the PVC's mount path).
func (t translator) inverse() translator {
	ms := make([]mount, 0, len(t.mounts))
	for _, m := range t.mounts {
		ms = append(ms, mount{containerPath: m.hostPath, hostPath: m.containerPath})
	}
	return newTranslator(ms)
}

// rewrite replaces every whole-path occurrence of a mounted container path in s.
func (t translator) rewrite(s string) string {
	if len(t.mounts) == 0 || !strings.Contains(s, "/") {
		return s
	}
	var b strings.Builder
	i := 0
	for i < len(s) {
		matched := false
		if s[i] == '/' && startsPath(s, i) {
			for _, m := range t.mounts {
				end := i + len(m.containerPath)
				if strings.HasPrefix(s[i:], m.containerPath) && (end == len(s) || !isNameChar(s[end])) {
					b.WriteString(m.hostPath)
					i = end
					matched = true
					break
				}
			}
		}
		if !matched {
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}
