/*
 * A DLL that loads but is no Quiesce plugin: it exports one function and
 * none of the quiesce_plugin_* entry points, so the loader must refuse it
 * naming what is missing (plugin_conformance_test.sh).
 */
__declspec(dllexport) int not_a_quiesce_plugin(void) { return 0; }
