package bullmq

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestFlowOptsMatchNode adds the same flow with Node's FlowProducer and
// Go's, on the same queues, and compares what each job stores: opts (no
// jobId for generated ids, opts.parent {id, queue} on children, the
// parent-on-failure flags) and the parent field.
func TestFlowOptsMatchNode(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	parents, children := name+"-parents", name+"-children"
	var nodeTree struct {
		ID       string   `json:"id"`
		Children []string `json:"children"`
	}
	runNode(t, 30*time.Second, "flow", nodeParams(t, rdb, parents, map[string]any{"flow": map[string]any{
		"name": "report", "queueName": parents, "data": map[string]int{"r": 1}, "opts": map[string]any{"attempts": 2},
		"children": []map[string]any{
			{"name": "a", "queueName": children, "data": map[string]int{"c": 1}, "opts": map[string]any{"priority": 2}},
			{"name": "b", "queueName": children, "opts": map[string]any{"failParentOnFailure": true}},
			{"name": "c", "queueName": children, "opts": map[string]any{"continueParentOnFailure": true}},
			{"name": "d", "queueName": children, "opts": map[string]any{"removeDependencyOnFailure": true}},
			{"name": "e", "queueName": children, "opts": map[string]any{"ignoreDependencyOnFailure": true}},
		},
	}}), &nodeTree)
	fp, _ := NewFlowProducer(rdb, FlowProducerOptions{})
	goTree, err := fp.Add(ctx, FlowJob{Name: "report", Queue: parents, Data: map[string]int{"r": 1}, Opts: JobOptions{Attempts: 2},
		Children: []FlowJob{
			{Name: "a", Queue: children, Data: map[string]int{"c": 1}, Opts: JobOptions{Priority: 2}},
			{Name: "b", Queue: children, Opts: JobOptions{FailParentOnFailure: true}},
			{Name: "c", Queue: children, Opts: JobOptions{ContinueParentOnFailure: true}},
			{Name: "d", Queue: children, Opts: JobOptions{RemoveDependencyOnFailure: true}},
			{Name: "e", Queue: children, Opts: JobOptions{IgnoreDependencyOnFailure: true}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	pq, _ := NewQueue(rdb, parents, QueueOptions{})
	cq, _ := NewQueue(rdb, children, QueueOptions{})
	// stored returns a job's opts and parent field, with the parent's id
	// replaced by "<parent>".
	stored := func(q *Queue, id, parentID string) map[string]any {
		h := rdb.HGetAll(ctx, q.Key(id)).Val()
		var opts, parent map[string]any
		if err := json.Unmarshal([]byte(h["opts"]), &opts); err != nil {
			t.Fatalf("opts of %s: %q", id, h["opts"])
		}
		if h["parent"] != "" {
			_ = json.Unmarshal([]byte(h["parent"]), &parent)
			if parent["id"] == parentID {
				parent["id"] = "<parent>"
			}
		}
		if p, ok := opts["parent"].(map[string]any); ok && p["id"] == parentID {
			p["id"] = "<parent>"
		}
		return map[string]any{"name": h["name"], "opts": opts, "parent": parent, "parentKeySet": h["parentKey"] != ""}
	}
	if n, g := stored(pq, nodeTree.ID, ""), stored(pq, goTree.Job.ID, ""); !reflect.DeepEqual(n, g) {
		t.Errorf("parent stored differently\n node: %v\n go:   %v", n, g)
	}
	if len(nodeTree.Children) != len(goTree.Children) {
		t.Fatalf("children: node %v, go %d", nodeTree.Children, len(goTree.Children))
	}
	for i, nid := range nodeTree.Children {
		n, g := stored(cq, nid, nodeTree.ID), stored(cq, goTree.Children[i].Job.ID, goTree.Job.ID)
		if !reflect.DeepEqual(n, g) {
			t.Errorf("child %d stored differently\n node: %v\n go:   %v", i, n, g)
		}
	}
}

// TestGoFlowContinueAndRemoveOnFailure: children a Go FlowProducer adds
// with ContinueParentOnFailure or RemoveDependencyOnFailure let their
// parent run when they fail; a Node worker runs the parent and reads the
// failure (getFailedChildrenValues) or no trace of the removed dependency.
func TestGoFlowContinueAndRemoveOnFailure(t *testing.T) {
	needNode(t)
	for _, tc := range []struct {
		name       string
		opts       JobOptions
		wantFailed bool
	}{
		{"continueParentOnFailure", JobOptions{ContinueParentOnFailure: true}, true},
		{"removeDependencyOnFailure", JobOptions{RemoveDependencyOnFailure: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, name := realClient(t)
			ctx := ctxT(t, 60*time.Second)
			parents, children := name+"-p", name+"-c"
			fp, _ := NewFlowProducer(rdb, FlowProducerOptions{})
			tree, err := fp.Add(ctx, FlowJob{Name: "parent", Queue: parents, Children: []FlowJob{
				{Name: "ok", Queue: children},
				{Name: "bad", Queue: children, Data: map[string]int{"failTimes": 1}, Opts: tc.opts},
			}})
			if err != nil {
				t.Fatal(err)
			}
			w, _ := NewWorker(rdb, children, failingHandler("go"), WorkerOptions{})
			startWorker(t, w)
			var out struct {
				Seen []struct {
					ID             string                     `json:"id"`
					Children       map[string]json.RawMessage `json:"children"`
					FailedChildren map[string]string          `json:"failedChildren"`
				} `json:"seen"`
			}
			runNode(t, 45*time.Second, "work", nodeParams(t, rdb, parents, map[string]any{"count": 1, "children": true}), &out)
			if len(out.Seen) != 1 || out.Seen[0].ID != tree.Job.ID {
				t.Fatalf("Node ran %+v, want parent %s", out.Seen, tree.Job.ID)
			}
			s := out.Seen[0]
			okKey, badKey := "bull:"+children+":"+tree.Children[0].Job.ID, "bull:"+children+":"+tree.Children[1].Job.ID
			if _, ok := s.Children[okKey]; !ok || len(s.Children) != 1 {
				t.Errorf("children values %v, want only %s", s.Children, okKey)
			}
			if got := s.FailedChildren[badKey]; tc.wantFailed != (got == "go fails attempt 1") || (!tc.wantFailed && len(s.FailedChildren) != 0) {
				t.Errorf("failed children values %v", s.FailedChildren)
			}
		})
	}
}
