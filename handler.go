package redisleak

import (
	"encoding/json"
	"net/http"
)

// Handler returns an http.Handler for a health endpoint: GET (and HEAD)
// answer 200 with application/json: the Stats fields plus "leaks", the
// current leaks (Scan's result, without reporting anything again). Sites
// and stacks are left out unless Options.HandlerShowSites is set. Other
// methods get 405.
func (t *Tracker) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body := struct {
			Stats
			Leaks []Leak `json:"leaks"`
		}{Stats: t.Stats(), Leaks: t.currentLeaks()}
		if !t.opts.HandlerShowSites {
			for i := range body.Leaks {
				body.Leaks[i].Site = ""
				body.Leaks[i].Stack = nil
			}
		}
		if body.Leaks == nil {
			body.Leaks = []Leak{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(body)
	})
}

// currentLeaks returns the holds over their threshold without reporting;
// sites are resolved only when they are shown.
func (t *Tracker) currentLeaks() []Leak {
	sites := 0
	if t.opts.HandlerShowSites {
		sites = -1
	}
	return t.listHolds(func(v holdView) bool { return v.leaked }, sites, true)
}
