#define BOOST_TEST_MODULE ckbridge
#include <boost/test/unit_test.hpp>
