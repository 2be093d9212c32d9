package bullmq

const helperEnv = "BULLMQ_TEST_HELPER"

func helperMain() int { return 0 }
