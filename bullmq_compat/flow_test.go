package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestInteropNodeFlowChildrenOnGo: the children of a Node flow run on a Go
// worker; the parent, in another queue, is released to a Node worker that
// reads the children's values. A failing child with failParentOnFailure
// fails its parent.
func TestInteropNodeFlowChildrenOnGo(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	parents, children := name+"-parents", name+"-children"
	var flow struct {
		ID       string   `json:"id"`
		Children []string `json:"children"`
	}
	runNode(t, 30*time.Second, "flow", nodeParams(t, rdb, parents, map[string]any{"flow": map[string]any{
		"name": "parent", "queueName": parents, "data": map[string]int{"p": 1},
		"children": []map[string]any{
			{"name": "child-a", "queueName": children, "data": map[string]int{"c": 1}},
			{"name": "child-b", "queueName": children, "data": map[string]int{"c": 2}, "opts": map[string]any{"priority": 3}},
		},
	}}), &flow)
	runNode(t, 30*time.Second, "flow", nodeParams(t, rdb, parents, map[string]any{"flow": map[string]any{
		"name": "doomed-parent", "queueName": parents,
		"children": []map[string]any{
			{"name": "bad-child", "queueName": children, "opts": map[string]any{"failParentOnFailure": true}},
		},
	}}), nil)
	if n := rdb.ZCard(ctx, "bull:"+parents+":waiting-children").Val(); n != 2 {
		t.Fatalf("%d parents waiting for children", n)
	}

	w, _ := NewWorker(rdb, children, func(ctx context.Context, j *Job) (any, error) {
		if j.Name == "bad-child" {
			return nil, errors.New("child broke")
		}
		return map[string]any{"by": "go", "child": j.Name}, nil
	}, WorkerOptions{})
	startWorker(t, w)

	var out struct {
		Seen []struct {
			ID       string                     `json:"id"`
			Name     string                     `json:"name"`
			Children map[string]json.RawMessage `json:"children"`
		} `json:"seen"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, parents, map[string]any{"count": 2, "children": true}), &out)
	var got *struct {
		ID       string                     `json:"id"`
		Name     string                     `json:"name"`
		Children map[string]json.RawMessage `json:"children"`
	}
	for i := range out.Seen {
		if out.Seen[i].Name == "parent" {
			got = &out.Seen[i]
		}
		if out.Seen[i].Name == "doomed-parent" {
			t.Errorf("the parent of a failed child (failParentOnFailure) ran")
		}
	}
	if got == nil || got.ID != flow.ID || len(got.Children) != 2 {
		t.Fatalf("Node parent run = %+v", out.Seen)
	}
	for k, v := range got.Children {
		if !strings.HasPrefix(k, "bull:"+children+":") || !strings.Contains(string(v), `"by":"go"`) {
			t.Errorf("child value %s = %s", k, v)
		}
	}
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, parents, nil), &nc)
	if nc.Counts["completed"] != 1 || nc.Counts["failed"] != 1 || nc.Counts["waiting-children"] != 0 {
		t.Errorf("parent queue counts = %v", nc.Counts)
	}
	if len(nc.Failed) != 1 || !strings.Contains(nc.Failed[0].FailedReason, "child bull:"+children+":") {
		t.Errorf("failed parents = %+v", nc.Failed)
	}
}

// TestInteropGoFlow: a flow added from Go; a Node worker runs the children,
// then the parent is released to a Go worker that reads their values.
func TestInteropGoFlow(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	parents, children := name+"-parents", name+"-children"
	fp, err := NewFlowProducer(rdb, FlowProducerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := fp.Add(ctx, FlowJob{Name: "report", Queue: parents, Data: map[string]int{"r": 1}, Children: []FlowJob{
		{Name: "part-a", Queue: children, Data: map[string]int{"c": 1}},
		{Name: "part-b", Queue: children, Data: map[string]int{"c": 2}, Opts: JobOptions{Priority: 2}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pq, _ := NewQueue(rdb, parents, QueueOptions{})
	if n := rdb.ZCard(ctx, pq.Key("waiting-children")).Val(); n != 1 {
		t.Fatalf("%d parents waiting for children", n)
	}
	if deps := rdb.SMembers(ctx, pq.Key(tree.Job.ID+":dependencies")).Val(); len(deps) != 2 {
		t.Fatalf("dependencies = %v", deps)
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, children, map[string]any{"count": 2}), nil)

	got := make(chan map[string]json.RawMessage, 1)
	w, _ := NewWorker(rdb, parents, func(ctx context.Context, j *Job) (any, error) {
		vals, err := j.ChildrenValues(ctx)
		if err != nil {
			return nil, err
		}
		got <- vals
		return len(vals), nil
	}, WorkerOptions{})
	startWorker(t, w)
	select {
	case vals := <-got:
		if len(vals) != 2 {
			t.Fatalf("children values = %v", vals)
		}
		for _, c := range tree.Children {
			v := vals["bull:"+children+":"+c.Job.ID]
			if !strings.Contains(string(v), `"by":"node"`) {
				t.Errorf("value of %s = %s", c.Job.ID, v)
			}
		}
	case <-ctx.Done():
		t.Fatal("the parent was not released")
	}
}

func TestFlowRejectsBadInputWritingNothing(t *testing.T) {
	rdb, _ := miniClient(t)
	fp, _ := NewFlowProducer(rdb, FlowProducerOptions{})
	_, err := fp.Add(context.Background(), FlowJob{Name: "p", Queue: "parents", Children: []FlowJob{
		{Name: "ok", Queue: "children"},
		{Name: "bad", Queue: "children", Opts: JobOptions{Priority: MaxPriority + 1}},
	}})
	if !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("err = %v", err)
	}
	if n := rdb.DBSize(context.Background()).Val(); n != 0 {
		t.Fatalf("%d keys written", n)
	}
	if _, err := fp.Add(context.Background(), FlowJob{Name: "p", Queue: ""}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("empty queue: err = %v", err)
	}
}

// TestGoFlowFailParentOnFailure: a child added with FailParentOnFailure
// fails its parent, which a worker then fails without running it.
func TestGoFlowFailParentOnFailure(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	parents, children := name+"-parents", name+"-children"
	fp, _ := NewFlowProducer(rdb, FlowProducerOptions{})
	tree, err := fp.Add(ctx, FlowJob{Name: "parent", Queue: parents, Children: []FlowJob{
		{Name: "bad", Queue: children, Opts: JobOptions{FailParentOnFailure: true}},
		{Name: "slow", Queue: children},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cw, _ := NewWorker(rdb, children, func(ctx context.Context, j *Job) (any, error) {
		if j.Name == "bad" {
			return nil, errors.New("broken child")
		}
		return nil, nil
	}, WorkerOptions{})
	startWorker(t, cw)
	pw, _ := NewWorker(rdb, parents, func(ctx context.Context, j *Job) (any, error) {
		t.Errorf("the parent of a failed child ran")
		return nil, nil
	}, WorkerOptions{})
	startWorker(t, pw)
	pq, _ := NewQueue(rdb, parents, QueueOptions{})
	waitEvents(t, rdb, pq, 1, "failed")
	want := "child bull:" + children + ":" + tree.Children[0].Job.ID + " failed"
	if r := rdb.HGet(ctx, pq.Key(tree.Job.ID), "failedReason").Val(); r != want {
		t.Fatalf("parent failedReason = %q, want %q", r, want)
	}
}

// TestInteropNodeFlowFailureOptionsOnGo: children of a Node flow that fail
// on a Go worker with continueParentOnFailure, ignoreDependencyOnFailure
// and removeDependencyOnFailure release the parent as Node expects.
func TestInteropNodeFlowFailureOptionsOnGo(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	parents, children := name+"-parents", name+"-children"
	for _, opt := range []string{"continueParentOnFailure", "ignoreDependencyOnFailure", "removeDependencyOnFailure"} {
		runNode(t, 30*time.Second, "flow", nodeParams(t, rdb, parents, map[string]any{"flow": map[string]any{
			"name": opt, "queueName": parents,
			"children": []map[string]any{
				{"name": "fails", "queueName": children, "opts": map[string]any{opt: true}},
			},
		}}), nil)
	}
	w, _ := NewWorker(rdb, children, func(ctx context.Context, j *Job) (any, error) {
		return nil, errors.New("child broke")
	}, WorkerOptions{})
	startWorker(t, w)
	var out struct {
		Seen []struct {
			Name            string            `json:"name"`
			FailedChildren  map[string]string `json:"failedChildren"`
			IgnoredFailures map[string]string `json:"ignoredFailures"`
		} `json:"seen"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, parents, map[string]any{"count": 3, "children": true}), &out)
	seen := map[string]int{}
	for _, s := range out.Seen {
		seen[s.Name]++
		switch s.Name {
		case "continueParentOnFailure":
			if len(s.FailedChildren) != 1 {
				t.Errorf("cpof parent: failed children %v", s.FailedChildren)
			}
		case "ignoreDependencyOnFailure":
			if len(s.IgnoredFailures) != 1 {
				t.Errorf("idof parent: ignored failures %v", s.IgnoredFailures)
			}
			for _, v := range s.IgnoredFailures {
				if v != "child broke" {
					t.Errorf("idof parent: failure %q", v)
				}
			}
		}
	}
	if len(seen) != 3 {
		t.Fatalf("Node ran the parents %v, want all three released", seen)
	}
}
