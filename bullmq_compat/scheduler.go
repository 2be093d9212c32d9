package bullmq

// scheduleNext is called for each fetched job produced by a Node job
// scheduler (a job with rjk).
func (w *Worker) scheduleNext(j *Job) {}
