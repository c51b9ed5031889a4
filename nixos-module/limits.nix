# The policy's limits (nanoclaw/policy.py LIMIT_RANGES), by option name: the policy key, its
# bounds and what it is.
{
  memoryMaxBytes = {
    key = "memory_max_bytes";
    low = 16777216;
    high = 68719476736;
    text = "MemoryMax= of a tool unit in bytes (nanoclaw's default: 512 MiB)";
  };
  tasksMax = {
    key = "tasks_max";
    low = 8;
    high = 4096;
    text = "TasksMax= of a tool unit (default 64)";
  };
  cpuQuotaPercent = {
    key = "cpu_quota_percent";
    low = 1;
    high = 6400;
    text = "CPUQuota= of a tool unit, in percent of one CPU (default 100)";
  };
  wallSeconds = {
    key = "wall_seconds";
    low = 1;
    high = 86400;
    text = "the longest a tool call may run, in seconds (default 300)";
  };
  outputBytes = {
    key = "output_bytes";
    low = 1024;
    high = 67108864;
    text = "bytes kept of a call's stdout and of its stderr (default 1 MiB)";
  };
}
