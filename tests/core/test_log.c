/* SPDX-License-Identifier: MIT */
/*
 * Structured logs (asynq/log.h): the logfmt line a user's log pipeline
 * reads (time, level, event, pairs in order), quoting of values that need
 * it, the level threshold, and that a line is handed over whole.
 */
#include "testutil.h"
#include "asynq/log.h"

static char lines[4096];
static size_t n_lines, len;

static void
capture(const char *line, size_t n, void *arg)
{
	(void)arg;
	assert_true(n > 0 && line[n - 1] == '\n');
	if (len + n < sizeof(lines)) {
		memcpy(lines + len, line, n);
		len += n;
		lines[len] = '\0';
	}
	n_lines++;
}

static int
log_setup(void **state)
{
	len = 0;
	n_lines = 0;
	lines[0] = '\0';
	asynq_log_set_sink(capture, NULL);
	asynq_log_set_level(ASYNQ_LOG_INFO);
	return tu_setup(state);
}

static void
test_log_line_shape(void **state)
{
	(void)state;
	asynq_log(ASYNQ_LOG_INFO, "listen", "server", "asynq.users.Users",
	    "url", "tcp://0.0.0.0:7001", NULL);
	assert_int_equal(n_lines, 1);
	/* ts=YYYY-MM-DDTHH:MM:SS.mmmZ first. */
	assert_int_equal(strncmp(lines, "ts=", 3), 0);
	assert_int_equal(lines[13], 'T');
	assert_int_equal(lines[26], 'Z');
	assert_string_equal(lines + 27,
	    " level=info event=listen server=asynq.users.Users "
	    "url=tcp://0.0.0.0:7001\n");
}

static void
test_log_quotes_what_needs_it(void **state)
{
	(void)state;
	asynq_log(ASYNQ_LOG_WARN, "slow_request", "why", "a b", "q",
	    "say \"hi\"", "eq", "k=v", "nl", "x\ny", "empty", "", NULL);
	char *p = strstr(lines, "level=warn");
	assert_non_null(p);
	assert_string_equal(p,
	    "level=warn event=slow_request why=\"a b\" q=\"say \\\"hi\\\"\" "
	    "eq=\"k=v\" nl=\"x\\ny\" empty=\"\"\n");
}

static void
test_log_threshold(void **state)
{
	(void)state;
	asynq_log(ASYNQ_LOG_DEBUG, "hidden", NULL);
	assert_int_equal(n_lines, 0);
	assert_false(asynq_log_enabled(ASYNQ_LOG_DEBUG));
	asynq_log_set_level(ASYNQ_LOG_ERROR);
	asynq_log(ASYNQ_LOG_WARN, "hidden", NULL);
	asynq_log(ASYNQ_LOG_ERROR, "shown", NULL);
	assert_int_equal(n_lines, 1);
	assert_non_null(strstr(lines, "event=shown"));
	asynq_log_set_level(ASYNQ_LOG_OFF);
	asynq_log(ASYNQ_LOG_ERROR, "hidden", NULL);
	assert_int_equal(n_lines, 1);
	asynq_log_level l;
	assert_true(asynq_log_level_parse("warn", &l));
	assert_int_equal(l, ASYNQ_LOG_WARN);
	assert_false(asynq_log_level_parse("loud", &l));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_log_line_shape, log_setup,
		    tu_teardown),
		cmocka_unit_test_setup_teardown(test_log_quotes_what_needs_it,
		    log_setup, tu_teardown),
		cmocka_unit_test_setup_teardown(test_log_threshold, log_setup,
		    tu_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
