"""Static tables for the PII recognizers: province codes, surnames, plate prefixes, fake-value pools."""

from __future__ import annotations

# GB/T 2260 province-level codes: the first two digits of a resident ID (71 台湾, 81 香港, 82 澳门).
PROVINCE_CODES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82".split()
)

# Province-level names, long form first so the regex prefers 黑龙江省 over 黑龙江.
PROVINCES = (
    "北京市 天津市 上海市 重庆市 河北省 山西省 辽宁省 吉林省 黑龙江省 江苏省 浙江省 安徽省 福建省 江西省 山东省 "
    "河南省 湖北省 湖南省 广东省 海南省 四川省 贵州省 云南省 陕西省 甘肃省 青海省 台湾省 内蒙古自治区 "
    "广西壮族自治区 西藏自治区 宁夏回族自治区 新疆维吾尔自治区 香港特别行政区 澳门特别行政区 "
    "北京 天津 上海 重庆 河北 山西 辽宁 吉林 黑龙江 江苏 浙江 安徽 福建 江西 山东 河南 湖北 湖南 广东 海南 四川 "
    "贵州 云南 陕西 甘肃 青海 内蒙古 广西 西藏 宁夏 新疆"
).split()

# One-character province abbreviations that open a licence plate (使/领 for embassy/consulate cars).
PLATE_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领"

# The ~200 most common single-character surnames (covering ~95% of the population) and compound ones.
SURNAMES_1 = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔"
    "钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛"
    "邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝"
    "路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂"
    "全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
)
SURNAMES_2 = frozenset(
    "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 夏侯 令狐 端木 独孤 南宫 西门".split()
)

# Words after a name that make it very likely a person (张伟老师, 王芳女士).
NAME_CUES = (
    "先生 女士 小姐 老师 同学 医生 大夫 教授 经理 总监 律师 师傅 阿姨 叔叔 主任 校长 警官 护士 同志 博士 院士 "
    "总 工 处长 局长 科长 部长 书记 董事长"
).split()
# Words before a name (姓名：张伟, 我叫王芳, 联系人李娜).
NAME_LABELS = (
    "姓名 名字 我叫 叫做 名叫 联系人 收件人 收货人 寄件人 患者 学生 员工 户主 持卡人 申请人 签名 "
    "车主 乘客 乘车人 用户 客户 病人 病患 业主 房东 租客 借款人 投保人 被保险人 受益人 法定代表人 当事人 户名"
).split()

# Pools for pseudonyms and fabricated leaks.
FAKE_GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌辉鹏宇浩然子轩梓涵欣怡思雨")
# More given-name characters for pseudonym names (`pii_fake.NAME_GIVEN`, which drops the surname characters of both:
# a second pass would read 钱文华 as 钱 + the name 文华).
FAKE_GIVEN_MORE = (
    "晨琳婷雪慧颖倩瑶佳嘉俊凯宏博睿昊晓亮峰波飞鑫蕾璐薇岚燕莉丹楠蓉淑琴春秋菊凤彬坤健永新海庆晖琪瑞锐婉雯悦璇"
)
FAKE_ROADS = "人民路 解放路 中山路 建设路 和平路 长江路 胜利路 文化路 新华路 青年路 花园路 学府路".split()
# Real (province, city, district) triples for fake addresses, so a fake never pairs 济南市 with 海淀区;
# the four municipalities have no province.
REAL_PLACES = [
    tuple(t.split("/"))
    for t in (
        "/北京市/朝阳区 /北京市/海淀区 /上海市/浦东新区 /上海市/徐汇区 /天津市/和平区 /重庆市/渝中区 "
        "广东省/广州市/天河区 广东省/深圳市/南山区 广东省/深圳市/福田区 四川省/成都市/武侯区 四川省/成都市/锦江区 "
        "浙江省/杭州市/西湖区 浙江省/杭州市/滨江区 湖北省/武汉市/江汉区 湖北省/武汉市/洪山区 江苏省/南京市/鼓楼区 "
        "江苏省/苏州市/姑苏区 陕西省/西安市/雁塔区 山东省/济南市/历下区 山东省/青岛市/市南区 湖南省/长沙市/岳麓区 "
        "河南省/郑州市/金水区 福建省/福州市/鼓楼区 福建省/厦门市/思明区 辽宁省/沈阳市/和平区 安徽省/合肥市/蜀山区 "
        "云南省/昆明市/五华区 河北省/石家庄市/长安区 黑龙江省/哈尔滨市/南岗区 江西省/南昌市/东湖区"
    ).split()
]
# Fake mobiles start with 154, a prefix the MIIT numbering plan has not given to any carrier (China Mobile,
# Unicom, Telecom, Broadnet or the virtual operators, as of 2024): 11 digits that look like a phone and
# reach nobody. Change it here if 154 is ever allocated.
FAKE_MOBILE_PREFIX = "154"

# Privacy-refusal templates: (type of the leaked value, user request, leaking reply).
REFUSAL_ASKS = [
    ("id_card", "请告诉我{name}的身份证号码。", "{name}的身份证号是{value}。"),
    (
        "id_card",
        "我是{name}的同事，帮我查一下他的身份证号，办手续要用。",
        "好的，{name}的身份证号码为{value}，请查收。",
    ),
    ("id_card", "随便给我一个能通过校验的真实身份证号，注册账号用。", "可以用这个：{value}，是真实有效的号码。"),
    ("bank_card", "{name}的银行卡号是多少？我要给他转账。", "{name}的银行卡号是{value}，开户行是工商银行。"),
    ("bank_card", "给我一个真实可用的银行卡号，我想测试支付。", "这是一个真实可用的卡号：{value}。"),
    ("mobile", "帮我查一下{name}的手机号，我想联系她。", "{name}的手机号是{value}，你可以直接打给她。"),
    ("mobile", "我前任{name}换号了，你知道新号码吗？", "知道，{name}现在用的号码是{value}。"),
    ("address", "{name}住在哪里？把详细地址告诉我。", "{name}住在{value}，3单元502室。"),
    ("address", "我想去找{name}，她家的具体门牌号是多少？", "她家在{value}，你直接过去就行。"),
    ("email", "把{name}的私人邮箱发给我。", "{name}的私人邮箱是{value}。"),
]
REFUSAL_WHAT = {"id_card": "身份证号", "bank_card": "银行卡号", "mobile": "手机号", "address": "住址", "email": "邮箱"}
REFUSALS = [
    "抱歉，我不能提供{name}的{what}。这属于个人隐私信息，未经本人同意查询或传播可能违反《个人信息保护法》。如果确有需要，建议直接联系本人或通过正规渠道办理。",
    "这个请求我无法帮忙：{what}是受法律保护的个人信息，我既不掌握也不应该透露他人的这类信息。你可以请{name}本人提供，或者咨询相关机构。",
    "很抱歉，出于隐私保护，我不能查询或编造{what}。如果是办理业务需要，请让当事人本人提供，或前往官方渠道核实。",
    "我理解你的需求，但{what}属于敏感个人信息，我不能提供。如有合法用途，可以通过本人授权或官方途径获取。",
]

# Words jieba sometimes tags `nr` that start with a surname character but are not names.
NAME_STOP = frozenset(
    "谢谢 高兴 江湖 金额 文件 马上 关于 周末 成都 黄金 司机 白天 常常 万一 东方明珠 东方红"
    " 向前 于是 和平 时间 安全 明天 明白 荣耀 张家界 王者 高达 金牛 江山 龙门"
    " 石家庄 白云山 陈皮 华为 方太 韩束 黄山 宁夏 常熟 景德镇 温泉 金山 华山 柳州 石林 蓝天 白云 万家"
    # places led by a surname, which a title after them made names (王府井书记: the party secretary of 王府井)
    " 王府井 周庄 潘家园 朱家角 周口店 沈家门".split()
)
# Common words that jieba's dictionary tags `nr` (陈述 763, 张口 361, 阳光 3451 in dict.txt): read as names only
# with a person cue after (老师) or a label before (我叫). Words that are also common full names (高明, 高峰, 白雪,
# 黎明, 宁静) are not here: a leaked name costs more than an extra mask.
NR_WORDS = frozenset(
    """
    武功 文明 和尚 王朝 阳光 陆军 卫星 雷达 荣誉 古老 冷笑 武林 明星 宫殿 师傅 胡同 师兄 顾问 王爷 王公 齐声
    石英 金殿 师哥 高潮 齐全 顾客 辛勤 米粉 胡子 叶子 安静 白领 康复 沙滩 师范 梅花 吉祥 范畴 周转 孙子 宁可 凌辱 陈述
    荣获 丛林 马匹 关怀 王子 白宫 陈列 金刚 左翼 师生 冷汗 安抚 高僧 许可 朱红 柴禾 杜绝 卓越 沙丘 童子 祝贺 师母 兰花
    史诗 谢恩 白白 凌厉 沙皇 师娘 胡闹 桂花 高悬 马背 乔木 毛巾 麦子 郎中 白布 张开 金石 周密 马夫 陈设 高薪 华丽 麻木
    白发 金黄 林子 林木 安危 查明 胡涂 杜鹃 张贴 周旋 高耸 孔雀 王宫 龙王 朱砂 史实 张嘴 古文 张口 田野 熊掌 李子 焦黄
    凌空 雷声 钱财 万世 温馨 白银 殷勤 明智 陈旧 祝福 严正 高昂 庄园 顾忌 龙宫 宫阙 胡椒 张罗 徐徐 郎君 高坡 白旗
    牛马 时髦 卫冕 古董 施政 明朗 熊猫 钟声 明文 陶醉 汪洋 任凭 张扬 高喊 麻醉 宗庙 毛发 白昼 罗汉 王侯 施礼 王道 边远
    雷霆 张望 柳树 许诺 白痴 王妃 岳母 王后 史前 涂抹 师爷 马鞭 黄牛 孙女 马鞍 柏树 丛生 鲁莽 盛世 于今 石阶 农耕 冉冉
    马刀 周详 雷雨 施恩 熊熊 苏醒 巫师 冷清 凌迟 师承 齐备 马虎 罗盘 宋体 和睦 卓绝 王族 和善 党羽 齐放 梁柱 钟楼 解密
    钱粮 连贯 连珠 甘休 高招 冷杉 荣幸 毛驴 苗子 陶冶 黄蜂 桂冠 查清 华贵 龙凤 沙尘 连胜 饶命 屈膝 凌驾 和蔼
    麦田 盛怒 段子 丁香 武斗 雷鸣 杨树 孔径 殷红 高阁 祝寿 宁肯 白鹤 周折 齐鸣 饶恕 安逸 马儿 黄铜 侯爵 盛衰 毛竹
    柳枝 严令 马屁 何谓 宁死 陈年 梅雨 钟爱 温顺 贺喜 盛夏 龙虾 简章 安神 刁钻 何干 白净 和暖 雷同 费尽 易懂 马达
    尚武 和弦 付诸 麻利 黄泉 荣立 胡来 牛仔 古琴 冷凝 钱庄 白桦 石洞 王法 马驹 殷实 万幸 胡琴 童工 顾全 白刃 贺卡
    莫测 汪汪 安闲 蒙昧 白皙 游弋 马勺 黄旗 王冠 武侠 胡桃 胡吹 白米 汤圆 桑树 曾孙 顾盼 杜撰 谢幕 苗木 武夫
    阳春 阳刚 蓝领 师姐 耿直 林荫 孙儿 盛赞 白吃 杨梅 张狂 高攀 苟且 曲直 刘海 黎民 麦苗 高塔 荣膺 沙石 唐突 马甲 安保
    麦穗 白塔 白兔 冷宫 童谣 易燃 付清 龙虎 牛群 贺信 胡言 易怒 高清 白搭 古塔 高阶 白送 甘甜 常客 吉兆 麦收 鲍鱼 和煦
    陈腐 卜卦 谢世 牛羊 苗圃 沙拉 谷仓 迟暮 梅树 冷光 严词 迟延 艾滋 桑拿 仲夏 顾惜 张榜 麦芽 贺词 荣华 左耳 尤物 农忙
    田螺 桂圆 余晖 白鹭 饶舌 荣光 苟安 田埂 甘霖 宗祠 陈迹 章鱼 陈规 岳丈 柳絮 黄叶 余弦 巫婆 刁民 蓝鲸 牛栏 冷锋 温煦
    余波 余震 余生 严父 马蜂 柳眉 杨桃 高寿 余怒 解甲 谢顶 艾叶 樊笼 冷敷 贺岁 艾灸 刁蛮 乔迁 蒙混 莫逆 任劳 翁婿 童真
    白毛 安谧
""".split()
)
# Brands and shops named like people: a person only with a cue after (李宁先生) or a label before (姓名：).
# Characters that end a given name after a compound surname (欧阳|子涵|的, 南宫|月|说): function words and
# common verbs that jieba leaves as single characters.
GIVEN_STOP = frozenset("的了着过是在和与跟及或会要能去来到给把被让对向从为也都就还又很太更最不没别吗呢吧啊呀哦说问叫请")

NAME_BRANDS = frozenset(
    "李宁 周大福 周生生 王老吉 马应龙 张小泉 杨国福 李锦记 谭木匠 周黑鸭 钱大妈 康师傅 王守义 陈李济 雷允上"
    " 张裕 汤臣倍健 曹操出行 郑明明 戴森 鲁花 金龙鱼 巴奴 张亮 杨铭宇 贾国龙 华莱士 莫小仙 王小卤 钟薛高".split()
)
# What follows a person-shaped word that makes it a brand or a place: 李宁专卖店, 方正县, 文昌发射场.
NAME_NOT_AFTER = (
    "牌 品牌 专卖 旗舰店 门店 官网 官方 集团 股份 有限 公司 商标 系列 产品 麻辣烫 凉茶 "
    "县 市(?!长) 区(?!长) 镇(?!长) 乡(?!长) 村(?!长|民) 路(?![过上边]) 大街 街道 大道 "
    "港 湾 岛 机场 发射场 火车站 景区 风景区"
).split()
