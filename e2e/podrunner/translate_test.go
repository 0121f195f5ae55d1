package main

import "testing"

func TestRewriteWholePathsOnly(t *testing.T) {
	tr := newTranslator([]mount{
		{containerPath: "/artifacts", hostPath: "/tmp/pv/a"},
		{containerPath: "/artifacts/cache", hostPath: "/tmp/cache"},
		{containerPath: "/dev/termination-log", hostPath: "/tmp/p/termination-log"},
		{containerPath: "/", hostPath: "/never"},
	})
	cases := map[string]string{
		"/artifacts":                          "/tmp/pv/a",
		"/artifacts/":                         "/tmp/pv/a/",
		"file:///artifacts/ns/m":              "file:///tmp/pv/a/ns/m",
		`{"artifacts":"file:///artifacts/n"}`: `{"artifacts":"file:///tmp/pv/a/n"}`,
		`{"p":"/artifacts"}`:                  `{"p":"/tmp/pv/a"}`,
		"/artifacts/cache/x":                  "/tmp/cache/x",
		"/artifacts/cachex":                   "/tmp/pv/a/cachex",
		"/artifacts2/x":                       "/artifacts2/x",
		"/data/artifacts":                     "/data/artifacts",
		"http://h/artifacts":                  "http://h/artifacts",
		"X=/artifacts,/artifacts":             "X=/tmp/pv/a,/tmp/pv/a",
		"/dev/termination-log":                "/tmp/p/termination-log",
		"/dev/termination-logs":               "/dev/termination-logs",
		"no paths here":                       "no paths here",
		"":                                    "",
	}
	for in, want := range cases {
		if got := tr.rewrite(in); got != want {
			t.Errorf("rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExpandVars(t *testing.T) {
	env := map[string]string{"A": "1", "B": "two"}
	cases := map[string]string{
		"$(A)":       "1",
		"x$(B)y":     "xtwoy",
		"$(C)":       "$(C)",
		"$$(A)":      "$(A)",
		"$":          "$",
		"$(A":        "$(A",
		"a$b":        "a$b",
		"$(A)-$(B)$": "1-two$",
	}
	for in, want := range cases {
		if got := expandVars(in, env); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestInverseRestoresContainerPaths(t *testing.T) {
	tr := newTranslator([]mount{
		{containerPath: "/artifacts", hostPath: "/tmp/pv/a"},
		{containerPath: "/tmp", hostPath: "/tmp/pods/p1/volumes/tmp"},
	})
	in := `{"modelUri":"file:///artifacts/ns/m/round-1/model","cache":"/tmp/x"}`
	host := tr.rewrite(in)
	if host != `{"modelUri":"file:///tmp/pv/a/ns/m/round-1/model","cache":"/tmp/pods/p1/volumes/tmp/x"}` {
		t.Fatalf("rewrite: %s", host)
	}
	if back := tr.inverse().rewrite(host); back != in {
		t.Fatalf("inverse: %s", back)
	}
}
