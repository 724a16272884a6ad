// Command render renders a Helm chart's templates the way `helm template` does, for the
// subset of Helm that palisade's chart uses (.Values, .Release, .Chart, .Files.Get,
// include, toYaml, and sprig's functions), so that a test can render the chart where Helm is not
// installable. It builds with Debian's Go and packaged libraries only (GOPATH mode).
//
// CRDs in crds/ are printed first, as `helm template --include-crds` does.
//
// Usage: render CHART_DIR RELEASE_NAME NAMESPACE [VALUES_FILE...]
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

// merge copies over onto base, recursing into maps, as Helm coalesces values files.
func merge(base, over map[string]interface{}) map[string]interface{} {
	for k, v := range over {
		if vm, ok := v.(map[string]interface{}); ok {
			if bm, ok := base[k].(map[string]interface{}); ok {
				base[k] = merge(bm, vm)
				continue
			}
		}
		base[k] = v
	}
	return base
}

func readYAML(path string) (map[string]interface{}, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(text, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

// chartFiles is .Files: the chart's other files, read by path relative to the chart.
type chartFiles struct{ dir string }

// Get returns a file's content, or "" when it cannot be read, as Helm's .Files.Get does.
func (f chartFiles) Get(name string) string {
	text, err := os.ReadFile(filepath.Join(f.dir, filepath.FromSlash(name)))
	if err != nil {
		return ""
	}
	return string(text)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 4 {
		fail("usage: render CHART_DIR RELEASE_NAME NAMESPACE [VALUES_FILE...]")
	}
	dir, release, namespace := os.Args[1], os.Args[2], os.Args[3]
	chart, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		fail("%v", err)
	}
	values, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		fail("%v", err)
	}
	for _, extra := range os.Args[4:] {
		over, err := readYAML(extra)
		if err != nil {
			fail("%v", err)
		}
		values = merge(values, over)
	}
	root := map[string]interface{}{
		"Values":  values,
		"Files":   chartFiles{dir},
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm"},
		"Chart": map[string]interface{}{
			"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
	}

	t := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = func(v interface{}) string {
		out, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(out), "\n")
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	t.Funcs(funcs)

	files, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		if _, err := t.New(filepath.Base(f)).Parse(string(text)); err != nil {
			fail("%v", err)
		}
	}
	// The crds/ folder as `helm template --include-crds` prints it: as written.
	crds, err := filepath.Glob(filepath.Join(dir, "crds", "*.yaml"))
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(crds)
	for _, f := range crds {
		text, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		fmt.Printf("---\n# Source: palisade/crds/%s\n%s\n", filepath.Base(f), strings.TrimSpace(strings.TrimPrefix(string(text), "---")))
	}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, root); err != nil {
			fail("%v", err)
		}
		for _, doc := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
				continue
			}
			fmt.Printf("---\n# Source: palisade/templates/%s\n%s\n", name, strings.TrimSpace(strings.TrimPrefix(doc, "---")))
		}
	}
}
