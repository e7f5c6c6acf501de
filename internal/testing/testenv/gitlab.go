package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// GitLab is the one stand-in this project allows: an HTTP server implementing exactly the documented GitLab
// API endpoints the agent calls, with their JSON shapes, PRIVATE-TOKEN authentication, offset pagination
// headers and JSON error bodies:
//
//	GET  /api/v4/projects/:id/deployments                       (api/deployments: list project deployments)
//	POST /api/v4/projects/:id/deployments                       (api/deployments: create a deployment)
//	GET  /api/v4/projects/:id/deployments/:deployment_id        (api/deployments: get a specific deployment)
//	PUT  /api/v4/projects/:id/deployments/:deployment_id        (api/deployments: update a deployment; 403 for
//	                                                             one a CI job created, as GitLab's lib/api/deployments.rb)
//	GET  /api/v4/projects/:id/jobs/:job_id/artifacts/*path      (api/job_artifacts: download a single file by job ID)
//	GET  /api/v4/projects/:id/variables                         (api/project_level_variables: list)
//	POST /api/v4/projects/:id/statuses/:sha                     (api/commits: set the pipeline status of a commit)
//	GET  /api/v4/projects/:id/repository/branches/:branch       (api/branches: get a single branch; `protected`)
//	GET  /api/v4/projects/:id/repository/tags/:tag_name         (api/tags: get a single tag; `protected`)
//
// Anything else answers 404 like GitLab.
type GitLab struct {
	Token   string
	Project string // path, e.g. sawmill/platform

	mu          sync.Mutex
	deployments []Deployment
	artifacts   map[int64]map[string]string
	variables   []Variable
	statuses    []Status
	// Branches and Tags are the repository's refs, with whether each is protected.
	branches, tags map[string]bool

	Outage   atomic.Bool  // every request answers 500
	Limited  atomic.Bool  // every request answers 429 with Retry-After
	Hang     atomic.Bool  // every request waits until the client gives up
	Slow     atomic.Int64 // every request waits this many milliseconds first
	Requests atomic.Int64
}

// Deployment is a deployment of the fake. Job 0 is a deployment created through the API (its `deployable` is
// null), as the agent records what it rolled out.
type Deployment struct {
	ID, Job, Pipeline int64
	Environment       string
	Status            string // success, failed, running, ...
	SHA, Ref          string
	Tag               bool // Ref is a tag
	Finished          time.Time
}

// Variable is a project CI/CD variable.
type Variable struct {
	Key, Value, Scope       string
	File, Hidden, Protected bool
}

// Status is a commit status the agent posted.
type Status struct {
	SHA, State, Name, Description, Ref string
}

// NewGitLab returns a fake for project, accepting token.
func NewGitLab(token, project string) *GitLab {
	return &GitLab{Token: token, Project: project, artifacts: map[int64]map[string]string{}}
}

// AddDeployment records a deployment whose job carries the artifact files (path -> content, paths as in the
// archive, e.g. release/release.json).
func (g *GitLab) AddDeployment(d Deployment, files map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deployments = append(g.deployments, d)
	g.artifacts[d.Job] = files
}

// SetRefs declares the repository's branches and tags, each protected or not (main is a protected branch
// unless declared otherwise).
func (g *GitLab) SetRefs(branches, tags map[string]bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.branches, g.tags = branches, tags
}

// SetVariables replaces the project's variables.
func (g *GitLab) SetVariables(vs ...Variable) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.variables = vs
}

// Deployments returns the environment's deployments (all of them when environment is empty), oldest first:
// the pipelines' and the ones the agent created, with their status now.
func (g *GitLab) Deployments(environment string) []Deployment {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Deployment
	for _, d := range g.deployments {
		if environment == "" || d.Environment == environment {
			out = append(out, d)
		}
	}
	return out
}

// Statuses returns the commit statuses posted so far.
func (g *GitLab) Statuses() []Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Status(nil), g.statuses...)
}

func (g *GitLab) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.Requests.Add(1)
	if g.Hang.Load() {
		<-r.Context().Done()
		return
	}
	if ms := g.Slow.Load(); ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if g.Limited.Load() {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"message":"429 Too Many Requests"}`)
		return
	}
	if g.Outage.Load() {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"message":"500 Internal Server Error"}`)
		return
	}
	if r.Header.Get("PRIVATE-TOKEN") != g.Token {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"message":"401 Unauthorized"}`)
		return
	}
	prefix := "/api/v4/projects/" + url.PathEscape(g.Project) + "/"
	p := r.URL.EscapedPath()
	if !strings.HasPrefix(p, prefix) {
		notFound(w)
		return
	}
	rest := strings.TrimPrefix(p, prefix)
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && rest == "deployments":
		g.listDeployments(w, r)
	case r.Method == http.MethodPost && rest == "deployments":
		g.createDeployment(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "deployments/"):
		g.getDeployment(w, strings.TrimPrefix(rest, "deployments/"))
	case r.Method == http.MethodPut && strings.HasPrefix(rest, "deployments/"):
		g.updateDeployment(w, r, strings.TrimPrefix(rest, "deployments/"))
	case r.Method == http.MethodGet && rest == "variables":
		g.listVariables(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "repository/branches/"):
		g.getRef(w, rest, "repository/branches/", g.branches, map[string]bool{"main": true})
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "repository/tags/"):
		g.getRef(w, rest, "repository/tags/", g.tags, nil)
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "jobs/"):
		parts := strings.SplitN(strings.TrimPrefix(rest, "jobs/"), "/", 3)
		if len(parts) != 3 || parts[1] != "artifacts" {
			notFound(w)
			return
		}
		job, _ := strconv.ParseInt(parts[0], 10, 64)
		file, _ := url.PathUnescape(parts[2])
		content, ok := g.artifacts[job][file]
		if !ok {
			notFound(w)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		fmt.Fprint(w, content)
	case r.Method == http.MethodPost && strings.HasPrefix(rest, "statuses/"):
		g.setStatus(w, r, strings.TrimPrefix(rest, "statuses/"))
	default:
		notFound(w)
	}
}

func notFound(w http.ResponseWriter) {
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprint(w, `{"message":"404 Not Found"}`)
}

func badRequest(w http.ResponseWriter, msg string) {
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// paginate writes GitLab's offset pagination headers and returns the slice bounds of the page.
func paginate(w http.ResponseWriter, r *http.Request, total int) (lo, hi int) {
	q := r.URL.Query()
	page, _ := strconv.Atoi(q.Get("page"))
	per, _ := strconv.Atoi(q.Get("per_page"))
	if page < 1 {
		page = 1
	}
	if per < 1 {
		per = 20
	}
	per = min(per, 100)
	pages := max((total+per-1)/per, 1)
	w.Header().Set("X-Page", strconv.Itoa(page))
	w.Header().Set("X-Per-Page", strconv.Itoa(per))
	w.Header().Set("X-Total", strconv.Itoa(total))
	w.Header().Set("X-Total-Pages", strconv.Itoa(pages))
	next := ""
	if page < pages {
		next = strconv.Itoa(page + 1)
	}
	w.Header().Set("X-Next-Page", next)
	prev := ""
	if page > 1 {
		prev = strconv.Itoa(page - 1)
	}
	w.Header().Set("X-Prev-Page", prev)
	return min((page-1)*per, total), min(page*per, total)
}

func (g *GitLab) listDeployments(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch q.Get("order_by") {
	case "", "id", "iid", "created_at", "updated_at", "finished_at", "ref":
	default:
		badRequest(w, "order_by does not have a valid value")
		return
	}
	var sel []Deployment
	for _, d := range g.deployments {
		if (q.Get("environment") == "" || q.Get("environment") == d.Environment) && (q.Get("status") == "" || q.Get("status") == d.Status) {
			sel = append(sel, d)
		}
	}
	desc := q.Get("sort") != "asc"
	sort.SliceStable(sel, func(i, j int) bool {
		a, b := sel[i], sel[j]
		if desc {
			a, b = b, a
		}
		if q.Get("order_by") == "finished_at" {
			return a.Finished.Before(b.Finished)
		}
		return a.ID < b.ID
	})
	lo, hi := paginate(w, r, len(sel))
	out := []map[string]any{}
	for _, d := range sel[lo:hi] {
		out = append(out, deploymentJSON(d))
	}
	_ = json.NewEncoder(w).Encode(out)
}

// getDeployment is GET /projects/:id/deployments/:deployment_id: the deployment, or 404.
func (g *GitLab) getDeployment(w http.ResponseWriter, id string) {
	for _, d := range g.deployments {
		if strconv.FormatInt(d.ID, 10) == id {
			_ = json.NewEncoder(w).Encode(deploymentJSON(d))
			return
		}
	}
	notFound(w)
}

// deploymentJSON is a deployment as the API shows it; one created through the API has `"deployable": null`.
func deploymentJSON(d Deployment) map[string]any {
	fin := d.Finished.UTC().Format(time.RFC3339Nano)
	ref := d.Ref
	if ref == "" {
		ref = "main"
	}
	m := map[string]any{
		"id": d.ID, "iid": d.ID, "ref": ref, "sha": d.SHA, "status": d.Status,
		"created_at": fin, "updated_at": fin, "user": map[string]any{"id": 1, "username": "operator", "name": "Operator", "state": "active"},
		"environment": map[string]any{"id": 1, "name": d.Environment, "external_url": nil},
		"deployable":  nil,
	}
	if d.Job != 0 {
		m["deployable"] = map[string]any{
			"id": d.Job, "status": d.Status, "stage": "deploy", "name": "deploy:" + d.Environment, "ref": ref, "tag": d.Tag,
			"created_at": fin, "started_at": fin, "finished_at": fin,
			"pipeline": map[string]any{"id": d.Pipeline, "sha": d.SHA, "ref": ref, "status": d.Status},
		}
	}
	return m
}

// deploymentStatuses are the statuses "Create a deployment" and "Update a deployment" accept
// (https://docs.gitlab.com/api/deployments/).
var deploymentStatuses = map[string]bool{"running": true, "success": true, "failed": true, "canceled": true}

// createDeployment is POST /projects/:id/deployments: environment, sha, ref, tag and status are required;
// the answer is 201 with the deployment, `"deployable": null`.
func (g *GitLab) createDeployment(w http.ResponseWriter, r *http.Request) {
	body, ok := readParams(w, r)
	if !ok {
		return
	}
	for _, k := range []string{"environment", "sha", "ref", "tag", "status"} {
		if _, ok := body[k]; !ok {
			badRequest(w, k+" is missing")
			return
		}
	}
	env, _ := body["environment"].(string)
	sha, _ := body["sha"].(string)
	ref, _ := body["ref"].(string)
	status, _ := body["status"].(string)
	tag, _ := body["tag"].(bool)
	if env == "" || sha == "" || ref == "" || !deploymentStatuses[status] {
		badRequest(w, "environment, sha, ref or status is invalid")
		return
	}
	// IDs above every other one, and above the ones tests give the pipelines' deployments (below 1000), so
	// that a test can add a pipeline's deployment after the agent recorded one.
	id := int64(1000)
	for _, d := range g.deployments {
		id = max(id, d.ID)
	}
	d := Deployment{ID: id + 1, Environment: env, Status: status, SHA: sha, Ref: ref, Tag: tag, Finished: time.Now()}
	g.deployments = append(g.deployments, d)
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(deploymentJSON(d))
}

// updateDeployment is PUT /projects/:id/deployments/:deployment_id with a status. A deployment that a CI job
// created cannot be updated: 403 {"message":"403 Forbidden - Deployments created using GitLab CI can not be
// updated using the API"}.
func (g *GitLab) updateDeployment(w http.ResponseWriter, r *http.Request, idText string) {
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil {
		notFound(w)
		return
	}
	body, ok := readParams(w, r)
	if !ok {
		return
	}
	status, _ := body["status"].(string)
	if !deploymentStatuses[status] {
		badRequest(w, "status does not have a valid value")
		return
	}
	for i, d := range g.deployments {
		if d.ID != id {
			continue
		}
		if d.Job != 0 {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"message":"403 Forbidden - Deployments created using GitLab CI can not be updated using the API"}`)
			return
		}
		g.deployments[i].Status, g.deployments[i].Finished = status, time.Now()
		_ = json.NewEncoder(w).Encode(deploymentJSON(g.deployments[i]))
		return
	}
	notFound(w)
}

// readParams reads a JSON body (client-go sends JSON) into a map; a body that does not parse answers 400.
func readParams(w http.ResponseWriter, r *http.Request) (map[string]any, bool) {
	var body map[string]any
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		badRequest(w, "invalid JSON")
		return nil, false
	}
	return body, true
}

func (g *GitLab) listVariables(w http.ResponseWriter, r *http.Request) {
	lo, hi := paginate(w, r, len(g.variables))
	out := []map[string]any{}
	for _, v := range g.variables[lo:hi] {
		typ := "env_var"
		if v.File {
			typ = "file"
		}
		var value any = v.Value
		if v.Hidden {
			value = nil
		}
		out = append(out, map[string]any{"key": v.Key, "value": value, "variable_type": typ, "protected": v.Protected,
			"masked": v.Hidden, "hidden": v.Hidden, "raw": false, "environment_scope": v.Scope, "description": nil})
	}
	_ = json.NewEncoder(w).Encode(out)
}

// getRef answers a single branch or tag: 404 {"message":"404 Branch Not Found"} when there is none.
func (g *GitLab) getRef(w http.ResponseWriter, rest, prefix string, refs, fallback map[string]bool) {
	name, err := url.PathUnescape(strings.TrimPrefix(rest, prefix))
	if err != nil {
		notFound(w)
		return
	}
	if refs == nil {
		refs = fallback
	}
	protected, ok := refs[name]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		kind := "Branch"
		if strings.Contains(prefix, "tags") {
			kind = "Tag"
		}
		fmt.Fprintf(w, `{"message":"404 %s Not Found"}`, kind)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"name": name, "protected": protected, "merged": false, "default": name == "main",
		"developers_can_push": !protected, "developers_can_merge": !protected, "can_push": true,
		"commit": map[string]any{"id": "0000000000000000000000000000000000000000"},
	})
}

func (g *GitLab) setStatus(w http.ResponseWriter, r *http.Request, sha string) {
	var body map[string]any
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		badRequest(w, "invalid JSON")
		return
	}
	state, _ := body["state"].(string)
	switch state {
	case "pending", "running", "success", "failed", "canceled", "skipped":
	default:
		badRequest(w, "state does not have a valid value")
		return
	}
	name, _ := body["name"].(string)
	if name == "" {
		name, _ = body["context"].(string)
	}
	if name == "" {
		name = "default"
	}
	desc, _ := body["description"].(string)
	ref, _ := body["ref"].(string)
	g.statuses = append(g.statuses, Status{SHA: sha, State: state, Name: name, Description: desc, Ref: ref})
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"id": len(g.statuses), "sha": sha, "ref": ref, "status": state, "name": name, "description": desc,
		"target_url": nil, "allow_failure": false, "created_at": time.Now().UTC().Format(time.RFC3339Nano),
		"author": map[string]any{"id": 1, "username": "sawmill-agent"},
	})
}
