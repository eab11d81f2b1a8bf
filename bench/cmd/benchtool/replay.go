package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/devgpu/devgpu/sdk"
)

// caps are the limits the admissions run sets, as the replay checks them.
type caps struct {
	GPUType        string // the type the quota and the pool are for
	MaxGPUs        int    // per project; 0 = none
	MaxGPUsPerUser int    // per user within a project; 0 = none
	Quota          int    // org quota on GPUType, all regions; 0 = none
	Pool           int    // GPUs of GPUType in the inventory; 0 = unknown
}

// replayReport is what the replay of the audit log found.
type replayReport struct {
	Starts, Ends int
	// Violations counts each start after which a cap was exceeded (one per
	// cap exceeded), and each GPU handed to a second session while the
	// first still held it.
	Violations int
	Examples   []string // the first few, in words
	// Peak concurrent GPUs, to show the caps were reached.
	PeakProject, PeakUser, PeakType int
	// Anomalies that are not cap violations but make the replay suspect:
	// an end without a start, a start of a session already started.
	Anomalies []string
	// StillActive counts sessions started and not ended by the end of the log.
	StillActive int
	// OrderInversions counts neighbours whose id order disagrees with
	// their (time, id) order; every InTx transaction is serialised, so 0.
	OrderInversions int
}

// held is an active session as the replay tracks it.
type held struct {
	project, user, gpuType string
	gpus                   []string
}

// startDetails is the part of a session.start event's "after" we read.
type startDetails struct {
	GPUType string   `json:"gpu_type"`
	Region  string   `json:"region"`
	GPUs    []string `json:"gpus"`
}

const maxExamples = 10

// replay walks events in commit order (time, then id), keeping the GPUs
// each project, each user in a project and the capped type hold, and
// checks them against c after every session.start. Events other than
// session.start and session.end are ignored.
func replay(events []sdk.AuditEvent, c caps) replayReport {
	evs := append([]sdk.AuditEvent(nil), events...)
	sort.SliceStable(evs, func(i, j int) bool {
		if !evs[i].At.Equal(evs[j].At) {
			return evs[i].At.Before(evs[j].At)
		}
		return evs[i].ID < evs[j].ID
	})
	var r replayReport
	for i := 1; i < len(evs); i++ {
		if evs[i].ID < evs[i-1].ID {
			r.OrderInversions++
		}
	}
	active := map[string]held{}
	byProject := map[string]int{}
	byUser := map[[2]string]int{}
	byType := map[string]int{}
	holder := map[string]string{} // GPU id -> session id
	flag := func(e sdk.AuditEvent, format string, args ...any) {
		r.Violations++
		if len(r.Examples) < maxExamples {
			r.Examples = append(r.Examples, fmt.Sprintf("audit #%d (%s, %s): ", e.ID, e.At.Format("15:04:05.000000"), e.Target)+fmt.Sprintf(format, args...))
		}
	}
	anomaly := func(e sdk.AuditEvent, format string, args ...any) {
		if len(r.Anomalies) < maxExamples {
			r.Anomalies = append(r.Anomalies, fmt.Sprintf("audit #%d %s %s: ", e.ID, e.Action, e.Target)+fmt.Sprintf(format, args...))
		}
	}
	for _, e := range evs {
		switch e.Action {
		case "session.start":
			r.Starts++
			if _, dup := active[e.Target]; dup {
				anomaly(e, "started twice")
				continue
			}
			var d startDetails
			if b, err := json.Marshal(e.After); err == nil {
				_ = json.Unmarshal(b, &d)
			}
			n := len(d.GPUs)
			if n == 0 {
				n = 1
				anomaly(e, "no GPUs recorded; counted as 1")
			}
			h := held{project: e.Project, user: e.Actor, gpuType: d.GPUType, gpus: d.GPUs}
			active[e.Target] = h
			for _, g := range d.GPUs {
				if other, taken := holder[g]; taken {
					flag(e, "GPU %s handed out while session %s still holds it", g, other)
				}
				holder[g] = e.Target
			}
			byProject[h.project] += n
			uk := [2]string{h.project, h.user}
			byUser[uk] += n
			byType[h.gpuType] += n
			r.PeakProject = max(r.PeakProject, byProject[h.project])
			r.PeakUser = max(r.PeakUser, byUser[uk])
			if h.gpuType == c.GPUType {
				r.PeakType = max(r.PeakType, byType[h.gpuType])
			}
			if c.MaxGPUs > 0 && byProject[h.project] > c.MaxGPUs {
				flag(e, "project %s holds %d GPUs, max_gpus %d", h.project, byProject[h.project], c.MaxGPUs)
			}
			if c.MaxGPUsPerUser > 0 && byUser[uk] > c.MaxGPUsPerUser {
				flag(e, "user %s holds %d GPUs in project %s, max_gpus_per_user %d", h.user, byUser[uk], h.project, c.MaxGPUsPerUser)
			}
			if h.gpuType == c.GPUType && c.Quota > 0 && byType[h.gpuType] > c.Quota {
				flag(e, "%d %s GPUs in use, org quota %d", byType[h.gpuType], h.gpuType, c.Quota)
			}
			if h.gpuType == c.GPUType && c.Pool > 0 && byType[h.gpuType] > c.Pool {
				flag(e, "%d %s GPUs in use, the pool has %d", byType[h.gpuType], h.gpuType, c.Pool)
			}
		case "session.end":
			r.Ends++
			h, ok := active[e.Target]
			if !ok {
				anomaly(e, "ended without a start in the log")
				continue
			}
			delete(active, e.Target)
			n := max(len(h.gpus), 1)
			for _, g := range h.gpus {
				if holder[g] == e.Target {
					delete(holder, g)
				}
			}
			byProject[h.project] -= n
			byUser[[2]string{h.project, h.user}] -= n
			byType[h.gpuType] -= n
		}
	}
	r.StillActive = len(active)
	return r
}

// String summarises the replay in one line.
func (r replayReport) String() string {
	s := fmt.Sprintf("replayed %d starts, %d ends: %d cap violations (peaks: project %d, user %d, type %d)",
		r.Starts, r.Ends, r.Violations, r.PeakProject, r.PeakUser, r.PeakType)
	if r.StillActive > 0 {
		s += fmt.Sprintf("; %d still active", r.StillActive)
	}
	if len(r.Anomalies) > 0 {
		s += "; anomalies: " + strings.Join(r.Anomalies, "; ")
	}
	return s
}
